"""The redaction boundary itself (`reconciler.log`): what it masks, in which forms,
and that masking never breaks the JSON around a value. In-process and fast; the CLI
tests (test_secrets_masked.py, test_secrets_property.py) show every exit uses it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import copy_example

from reconciler import log
from reconciler.config import load_settings
from reconciler.load import desired_secrets, load, referenced_names
from reconciler.manifests import Desired
from reconciler.providers import resolve_secrets
from reconciler.redaction import Redactor
from reconciler.session import Session


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    log.forget_secrets()
    yield
    log.forget_secrets()


def test_a_value_inside_a_longer_string_and_in_keys_is_masked() -> None:
    log.register_secret("s3cr3t-value")
    assert log.redact("a-s3cr3t-value-b") == "a-(sensitive)-b"
    data = {"k-s3cr3t-value": ["x s3cr3t-value", {"s3cr3t-value": 1}], "n": 2}
    assert log.redact_data(data) == {
        "k-(sensitive)": ["x (sensitive)", {"(sensitive)": 1}],
        "n": 2,
    }


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_json_escaped_and_url_encoded_forms_are_masked(ensure_ascii: bool) -> None:
    secret = 'pa"ss\\wörd/密'
    log.register_secret(secret)
    text = json.dumps({"v": f"<{secret}>"}, ensure_ascii=ensure_ascii)
    assert json.loads(log.redact(text)) == {"v": "<(sensitive)>"}
    assert log.redact(f"GET /x/{quote(secret, safe='')}") == "GET /x/(sensitive)"


def test_a_match_that_cuts_an_escape_takes_the_whole_escape() -> None:
    """`"Ű00000000"` is `"\\u017000000000"` in ASCII JSON: the secret 00000000 starts
    inside the escape; masking must not leave a broken `\\u017`."""
    log.register_secret("00000000")
    cases = {
        "Ű00000000": "(sensitive)",
        "\x1000000000": "(sensitive)",
        'q"00000000': 'q"(sensitive)',
    }
    for text, masked in cases.items():
        out = log.redact(json.dumps([text]))
        assert "00000000" not in out
        assert json.loads(out) == [masked]
    assert log.redact("\\\\00000000") == "\\\\(sensitive)"  # an escaped backslash stays


def test_short_values_are_not_searched_for() -> None:
    log.register_secrets(["abc", "", None, "  x  "])
    assert log.redact("abc  x  ") == "abc  x  "
    assert not log.is_secret("abc")


def test_log_lines_mask_values_keys_and_credential_named_fields() -> None:
    log.register_secret("tok-12345678")
    err = io.StringIO()
    with redirect_stderr(err):
        log.configure(fmt="json")
        log.get_logger("t").warning(
            "seen tok-12345678",
            detail={"tok-12345678": "x"},
            api_key="anything",
            items=["a tok-12345678"],
        )
    line = json.loads(err.getvalue())
    assert "tok-12345678" not in err.getvalue()
    assert line["event"] == "seen (sensitive)"
    assert line["detail"] == {"(sensitive)": "x"}
    assert line["api_key"] == "(sensitive)"
    assert line["items"] == ["a (sensitive)"]


def test_a_logger_follows_each_configure_and_its_level() -> None:
    """A logger resolves its structlog logger once, then again after every
    `configure`: lines go where the newest configuration sends them, at its level."""
    logger = log.get_logger("t")
    first, second = io.StringIO(), io.StringIO()
    with redirect_stderr(first):
        log.configure(fmt="json")
        logger.info("one")
    with redirect_stderr(second):
        log.configure(fmt="json", verbosity=-1)  # -q: warnings and worse
        logger.info("dropped")
        logger.warning("two", n=2)
    assert [json.loads(x)["event"] for x in first.getvalue().splitlines()] == ["one"]
    lines = [json.loads(x) for x in second.getvalue().splitlines()]
    assert [(x["event"], x["level"], x["n"]) for x in lines] == [("two", "warning", 2)]


def _named_by_instances(desired: Desired) -> set[str]:
    """Every secret name, found the slow way: each expanded instance's spec walked."""
    names = {
        n for insts in desired.instances.values() for i in insts.values() for n in i.secret_names
    }
    names.update(
        n
        for provs in desired.providers.values()
        for pc in provs.values()
        for n in pc.credentials.values()
    )
    return names


def test_registration_reads_every_reference_from_the_documents(tmp_path: Path) -> None:
    """`desired_secrets` reads references from the documents (fast); it must find
    every name the expanded instances refer to, overrides and schedule input included."""
    repo = copy_example(tmp_path / "repo")
    chat = repo / "manifests" / "deployments" / "support-chat.yaml"
    chat.write_text(
        chat.read_text().replace(
            "  overrides:\n",
            "  overrides:\n    dev: {env: {OVERRIDE_KEY: {secretEnv: OVR_SECRET}}}\n",
            1,
        )
    )
    reindex = repo / "manifests" / "schedules" / "reindex.yaml"
    reindex.write_text(
        reindex.read_text().replace(
            "input: {collection: docs}",
            "input: {collection: docs, auth: {secretEnv: SCHED_SECRET}}",
        )
    )
    desired = load(load_settings(repo, env={})).desired
    names = _named_by_instances(desired)
    assert {"OVR_SECRET", "SCHED_SECRET", "VENDOR_KEY"} <= names
    assert referenced_names(desired) >= names
    env = {n: f"value-of-{n}" for n in names}
    redactor = Redactor()
    redactor.add(desired_secrets(desired, env).values())
    assert all(redactor.is_secret(v) for v in env.values())


def test_two_sessions_in_one_process_do_not_share_secrets(tmp_path: Path) -> None:
    """Each session masks its output with its own redactor: another session's secret
    stays readable there (no session can reveal, by masking, what another holds), while
    log lines, which no session renders, mask both through the process-wide backstop."""
    repo = copy_example(tmp_path / "repo")
    one = Session.start(
        load_settings(repo, env={"VENDOR_KEY": "vendor-key-of-one", "GITHUB_TOKEN": "gh-of-one"})
    )
    two = Session.start(load_settings(repo, env={"VENDOR_KEY": "vendor-key-of-two"}))
    loaded = one.load()
    two.load()
    assert "vendor-key-of-one" in loaded.secrets
    # A secret found at run time, by a provider the session built.
    config = next(iter(loaded.desired.providers["dev"].values()))
    provider = one.provider(config)
    try:
        body = {"auth": {"secretEnv": "RUN_TIME"}}
        resolve_secrets(body, {"RUN_TIME": "found-at-run-time"}, provider.register_found)
    finally:
        provider.close()
    text = "vendor-key-of-one gh-of-one found-at-run-time | vendor-key-of-two"
    masked = "(sensitive) (sensitive) (sensitive) | "
    assert one.redactor.redact(text) == masked + "vendor-key-of-two"
    assert two.redactor.redact(text) == text.replace("vendor-key-of-two", "(sensitive)")
    assert one.redactor.redact_data({"k": [text]}) == {"k": [masked + "vendor-key-of-two"]}
    err = io.StringIO()
    with redirect_stderr(err):
        log.configure(fmt="json")
        log.get_logger("t").warning(text)
    assert json.loads(err.getvalue())["event"] == masked + "(sensitive)"
