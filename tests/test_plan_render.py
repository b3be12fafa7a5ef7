"""Issue 14: the human plan is written in one piece (plain text when not a terminal),
and says exactly what the line-by-line rich renderer said, whatever the values hold
(tabs, control codes, wide characters, line breaks). Speed is measured in
bench/plan.py --first, never here."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from reconciler.instances import InstanceKey
from reconciler.plan import Change, EnvironmentPlan, FieldDiff, Plan
from reconciler.views import plan as view
from reconciler.views.text import STYLES, SYMBOLS, change_lines, short, summary_line


def reference_human(plan: Plan, width: int = 100) -> str:
    """The renderer as it was: every line printed through rich, no color."""
    buf = io.StringIO()
    con = Console(
        file=buf,
        force_terminal=False,
        no_color=True,
        color_system=None,
        width=width,
        soft_wrap=True,
        highlight=False,
    )
    head = f"Plan for commit {short(plan.commit)}"
    if plan.ref:
        head += f" (ref {plan.ref})"
    if plan.dirty:
        head += " + uncommitted changes in the working tree"
    con.print(Text(head, style="bold"))
    for e in plan.environments:
        con.print()
        title = Text(f"{e.environment}", style="bold")
        title.append(f" (serial {e.serial}{', protected' if e.protected else ''}): ", style="")
        title.append(summary_line(e), style="dim" if not e.changes else "")
        con.print(title)
        for ch in e.changes:
            line = Text(f"  {SYMBOLS[ch.action]:>3} ", style=STYLES[ch.action])
            line.append(ch.address, style="bold")
            line.append(f"  ({ch.provider}, risk {ch.risk})", style="dim")
            con.print(line)
            for detail in change_lines(ch):
                con.print(Text(f"        {detail}"))
    con.print()
    total = sum(len(e.changes) for e in plan.environments)
    refused = sum(1 for e in plan.environments for c in e.changes if c.refused)
    if total == 0:
        con.print("No changes. The recorded state matches the manifests.")
    else:
        msg = f"{total} change{'s' if total != 1 else ''} in total."
        if refused:
            msg += f" {refused} refused (see above)."
        con.print(msg)
    return buf.getvalue()


# Everything but surrogates and ESC (the colored output is compared with its SGR codes
# removed); tabs, CR, form feeds, wide and combining characters stay in.
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x1b"),
    max_size=12,
) | st.sampled_from(["\tx", "a\tb\tc", "宽\t字", "x\r\ny", "\x0c", "é\u0301\t", ""])
LONG = st.lists(TEXT, min_size=1, max_size=5).map(lambda parts: "\n".join(parts) + "\t" * 3)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
    max_leaves=8,
)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    action = draw(st.sampled_from(["create", "update", "replace", "delete"]))
    key = InstanceKey("dev", draw(st.sampled_from(["Deployment", "Schedule"])), draw(TEXT))
    after: dict[str, Any] | None = None
    diff: list[FieldDiff] = []
    if action == "create":
        after = draw(st.dictionaries(TEXT, JSON, max_size=5))
        if draw(st.booleans()):
            after["prompt"] = {"name": draw(TEXT), "version": "1.0.0", "template": draw(LONG)}
    elif action != "delete":
        diff = [
            FieldDiff(draw(TEXT), draw(JSON | LONG), draw(JSON | LONG))
            for _ in range(draw(st.integers(0, 3)))
        ]
    return Change(
        action,  # type: ignore[arg-type]
        key,
        draw(TEXT),
        None,
        after,
        diff=diff,
        reason=draw(st.none() | TEXT),
        risk=draw(st.sampled_from(["low", "medium", "high", "critical"])),
        refused=draw(st.none() | TEXT),
    )


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    envs = [
        EnvironmentPlan(
            draw(TEXT),
            draw(st.integers(0, 99)),
            draw(st.booleans()),
            draw(st.lists(changes(), max_size=3)),
            draw(st.integers(0, 5)),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    return Plan(
        commit=draw(st.none() | st.text("0123456789abcdef", min_size=40, max_size=40)),
        dirty=draw(st.booleans()),
        ref=draw(st.none() | TEXT),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        environments=envs,
    )


@settings(max_examples=300, deadline=None)
@given(plan=plans())
def test_plain_text_is_what_rich_printed_line_by_line(plan: Plan) -> None:
    assert view.human(plan) == reference_human(plan)


@settings(max_examples=100, deadline=None)
@given(plan=plans())
def test_colored_text_says_the_same_with_styles(plan: Plan) -> None:
    colored = view.human(plan, color=True)
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == view.human(plan)
    if plan.environments:
        assert "\x1b[1m" in colored  # environment names are bold
