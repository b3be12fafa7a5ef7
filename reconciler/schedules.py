"""Cron, interval and timezone semantics: validation, next fire times, deploy windows.

croniter parses expressions and walks the calendar on *naive* wall-clock datetimes,
where it is plain calendar arithmetic. Which days match, and which instants a
wall-clock time stands for, are decided here, as cronie (Vixie cron's successor) does.
Sources: cronie's src/entry.c (a field is "starred" when its text starts with `*`:
MIN_STAR, HR_STAR, DOM_STAR, DOW_STAR; `@hourly` sets HR_STAR), src/cron.c
(`find_jobs` and the time-jump cases of `main`) and man/cron.8 ("Daylight Saving Time
and other time changes").

Day of month and day of week (Vixie cron): when either field starts with `*` (or
`?`), a day must match both; when neither does, a day matching either runs. So
`0 0 1 * */1` runs on the 1st only, and `30 4 1,15 * 5` on the 1st, the 15th and
every Friday.

DST, in the schedule's own zone. A cron is *wildcard* when its minute or hour field
starts with `*` (`*`, `*/15`, `*,5`; `@hourly`), else *fixed-time* (`30 2 * * *`,
`0 9-17 * * *`, `@daily`):

- Wildcard schedules run at every real instant whose wall clock matches: a skipped
  wall-clock time does not run, a repeated one runs twice. `0 * * * *` in
  Europe/Berlin on 2026-10-25 runs at 02:00 CEST, 02:00 CET, 03:00 CET (hourly
  throughout); on 2026-03-29 at 01:00 CET, then 03:00 CEST.
- Fixed-time schedules run once a day as scheduled: a wall-clock time that does not
  exist (02:30 in Berlin on 2026-03-29) runs at the first valid instant after the gap
  (03:00 CEST); one that occurs twice (02:30 on 2026-10-25) runs at its first
  occurrence only (CEST). Wall-clock times that land on the same instant run once.

Intervals are elapsed time, not wall-clock time: `6h` is exactly six hours in UTC
across any DST change. They are anchored at `startAt` (else at the Unix epoch), so
the fire times are the same on every call, whatever `now` is.

Deploy windows start as their cron does (the rules above). Their durations are
measured on the wall clock of the window's zone: a freeze from Friday 18:00 for
`2d12h` ends Monday 06:00 local, also on a weekend when the clocks change. The end is
the first instant after the start showing that wall-clock time (the first valid one
after a gap).
"""

from __future__ import annotations

import difflib
import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

__all__ = [
    "Window",
    "WindowVerdict",
    "describe_window",
    "evaluate_windows",
    "format_both",
    "next_fire_times",
    "parse_duration",
    "parse_interval",
    "spec_next_runs",
    "validate_cron",
    "validate_timezone",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
#: How far apart a wall-clock time and its instant can drift (largest real DST shift
#: is 2h); cron walks start this far away and filter, so no fire time is missed.
_SLACK = timedelta(hours=3)
_STEADY_SLACK = timedelta(minutes=1)
#: Deploy-window searches look at most this far ahead.
_HORIZON = timedelta(days=366)
#: Upper bound on the steps of one window search (each step moves time forward).
_MAX_STEPS = 20_000
#: A day filter that matches nothing in this long never will (the calendar repeats).
_FILTER_LIMIT = timedelta(days=400 * 366)

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {name: i + 1 for i, name in enumerate(_MONTHS)},
    {name: i for i, name in enumerate(_DAYS)},
)
_ATOM = r"(?:\d+|[a-z]{3})"
_ONE_VALUE = re.compile(rf"^({_ATOM})-\1(?:/\d+)?$")
_PLAIN = re.compile(rf"^(?:(\*)|({_ATOM})(?:-({_ATOM}))?)(?:/(\d+))?$")
#: Quartz-style extras croniter understands (L, 15W, W15 in day-of-month; L5 for the
#: last Friday, 5#2 or fri#2 for the second one in day-of-week): croniter checks them.
_SPECIAL = (
    re.compile(r"^(?:l|\d+w|w\d+)$"),
    re.compile(rf"^(?:l[0-7]|{_ATOM}#\d+)$"),
)
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SPAN = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$"
)
_UTC_NAMES = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"}
)


# --- validation ---------------------------------------------------------------------


def validate_cron(expr: str) -> str | None:
    """None when `expr` is a usable 5-field cron expression or macro, else why not."""
    try:
        _normalize_cron(expr)
    except ValueError as e:
        return str(e)
    return None


def validate_timezone(name: str) -> str | None:
    """None for an IANA zone name, else a message with the closest real names."""
    if not name.strip():
        return "timezone must not be empty; use an IANA name such as 'Europe/Berlin' or 'UTC'"
    if name in _zone_names():
        return None
    by_lower = {z.lower(): z for z in _zone_names()}
    if name.lower() in by_lower:
        return f"unknown timezone {name!r}; did you mean {by_lower[name.lower()]!r}?"
    close = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.6)
    if close:
        return f"unknown timezone {name!r}; did you mean {by_lower[close[0]]!r}?"
    return f"unknown timezone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"


def parse_interval(text: str) -> timedelta:
    """How often an interval schedule runs; at least one minute, so nothing hammers a provider."""
    value = _parse_span(text, "interval")
    if value < timedelta(minutes=1):
        raise ValueError(f"interval must be at least 1m, got {text.strip()}")
    return value


def parse_duration(text: str) -> timedelta:
    """How long a deploy window lasts (same syntax as intervals, any positive length)."""
    return _parse_span(text, "duration")


def _parse_span(text: str, what: str) -> timedelta:
    raw = text.strip()
    if raw.startswith("-"):
        raise ValueError(f"{what} must be positive, got {raw}")
    compact = raw.replace(" ", "").lower()
    m = _SPAN.match(compact)
    if not raw or m is None or not any(m.groups()):
        raise ValueError(
            f"{what} {raw!r} is not a duration: use numbers with units d, h, m, s "
            "(e.g. 90s, 30m, 6h, 1d, 1h30m)"
        )
    seconds = sum(
        (Fraction(g) * unit for g, unit in zip(m.groups(), _UNITS.values(), strict=True) if g),
        Fraction(0),
    )
    if seconds <= 0:
        raise ValueError(f"{what} must be greater than 0, got {raw}")
    try:
        return timedelta(microseconds=round(seconds * 1_000_000))
    except OverflowError:
        raise ValueError(f"{what} {raw} is too long") from None


@lru_cache(maxsize=256)
def _normalize_cron(expr: str) -> str:
    """The 5-field form of `expr` (macros expanded); ValueError naming the bad field."""
    text = " ".join(expr.split()).lower()
    if not text:
        raise ValueError("cron expression is empty")
    if text.startswith("@"):
        if text not in _MACROS:
            raise ValueError(
                f"unknown macro {expr.strip()!r}; use @hourly, @daily, @weekly, @monthly or @yearly"
            )
        return _MACROS[text]
    fields = text.split(" ")
    if len(fields) != 5:
        extra = "; seconds and years are not supported" if len(fields) in (6, 7) else ""
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}{extra}"
        )
    for index, field in enumerate(expr.split()):
        for part in field.split(","):
            _check_part(index, part)
    # croniter reads a one-value range (`5-5`) as `*`: give it the value itself.
    fields = [",".join(_ONE_VALUE.sub(r"\1", p) for p in f.split(",")) for f in fields]
    text = " ".join(fields)
    from croniter import CroniterError, croniter  # see _walk

    try:
        croniter(text)
    except (CroniterError, ValueError, KeyError) as e:
        raise ValueError(_croniter_message(str(e), expr)) from None
    _check_reachable(fields)
    return text


def _check_part(index: int, original: str) -> None:
    name = _FIELDS[index]
    low, high = _RANGES[index]
    part = original.lower()
    if part == "?" and index in (2, 4):
        return
    m = _PLAIN.match(part)
    if m is None:
        if index in (2, 4) and _SPECIAL[index // 4].match(part):
            nth = part.partition("#")[2]
            if nth and not 1 <= int(nth) <= 5:
                raise ValueError(f"{name} field: #{nth} must be #1-#5 (the nth such day)")
            return  # croniter checks the rest
        raise ValueError(f"{name} field: cannot read {original!r}")
    _, first, last, step = m.groups()
    if step is not None and int(step) < 1:
        raise ValueError(f"{name} field step must be at least 1, got {step}")
    for atom in (first, last):
        if atom is None:
            continue
        value = _atom_value(index, atom)
        if not low <= value <= high:
            raise ValueError(f"{name} field must be {low}-{high}, got {atom}")


def _atom_value(index: int, atom: str) -> int:
    if atom.isdigit():
        return int(atom)
    names = _NAMES[index]
    if atom in names:
        return names[atom]
    name = _FIELDS[index]
    if names:
        hint = "jan-dec" if index == 3 else "sun-sat"
        raise ValueError(f"{name} field: unknown name {atom!r} (use numbers or {hint})")
    raise ValueError(f"{name} field: expected a number, got {atom!r}")


def _croniter_message(message: str, expr: str) -> str:
    """croniter's message without its `[expr] is not acceptable` boilerplate."""
    text = re.sub(r"^\[[^\]]*\]\s*is not acceptable[.,]?\s*", "", message).strip()
    return text or f"cannot read cron expression {expr.strip()!r}"


def _check_reachable(fields: list[str]) -> None:
    """Refuse `0 0 30 2 *` and friends: a day that no listed month has never fires.

    Only when day-of-week starts with `*`: then both day fields must match.
    """
    dom, month, dow = fields[2], fields[3], fields[4]
    if not _starred(dow) or not re.fullmatch(r"[\d,]+", dom):
        return
    days = [int(d) for d in dom.split(",")]
    from croniter import croniter  # see _walk

    months = croniter(f"0 0 * {month} *").expanded[3]
    listed = range(1, 13) if months == ["*"] else [int(mo) for mo in months]
    if any(d <= _MAX_DAYS[mo - 1] for d in days for mo in listed):
        return
    names = ", ".join(_MONTHS[mo - 1].capitalize() for mo in listed)
    raise ValueError(f"never fires: day {dom} does not occur in {names}")


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def _zone(name: str | None) -> ZoneInfo:
    name = name or "UTC"
    if msg := validate_timezone(name):
        raise ValueError(msg)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:  # pragma: no cover - listed zones load
        raise ValueError(f"unknown timezone {name!r}") from e


# --- which wall-clock times match ---------------------------------------------------


@dataclass(frozen=True)
class _Cron:
    """A normalized cron split into what croniter walks well and what is decided here.

    croniter is only asked to walk expressions in which at most one day field is
    restricted (its own day-of-month/day-of-week combination differs from Vixie's), so
    the Vixie rule is built from those walks: their union (either field matches) or
    one walk filtered by the other field (both must match).
    """

    walks: tuple[str, ...]
    #: Both-must-match: the other day field as a croniter expression matched per date.
    day_filter: str | None
    #: Minute or hour starts with `*`: runs at every real instant (see module doc).
    wildcard: bool


def _starred(field: str) -> bool:
    return field.startswith(("*", "?"))


@lru_cache(maxsize=256)
def _compile(expr: str) -> _Cron:
    minute, hour, dom, month, dow = _normalize_cron(expr).split(" ")
    wildcard = minute.startswith("*") or hour.startswith("*")
    head = f"{minute} {hour}"
    if not _starred(dom) and not _starred(dow):
        walks = (f"{head} {dom} {month} *", f"{head} * {month} {dow}")
        return _Cron(walks, None, wildcard)
    if _starred(dom) and not _starred(dow):
        walk, other = f"{head} * {month} {dow}", f"0 0 {dom} * *"
    else:
        walk, other = f"{head} {dom.replace('?', '*')} {month} *", f"0 0 * * {dow}"
    everything = other.replace("?", "*") == "0 0 * * *"
    return _Cron((walk,), None if everything else other, wildcard)


@lru_cache(maxsize=4096)
def _day_matches(expr: str, day: datetime) -> bool:
    from croniter import croniter  # see _walk

    return bool(croniter.match(expr, day))


def _walk(expr: str, start: datetime, descending: bool) -> Iterator[datetime]:
    # Imported where used: loading croniter runs `file -b` on the interpreter (its
    # 32-bit check), ~15 ms that every command of a repo without schedules would pay.
    from croniter import CroniterBadDateError, croniter

    walker = croniter(expr, start)
    step = walker.get_prev if descending else walker.get_next
    while True:
        try:
            wall: datetime = step(datetime)
        except CroniterBadDateError:
            return
        yield wall


def _walls(cron: _Cron, start: datetime, descending: bool) -> Iterator[datetime]:
    """Matching wall-clock times strictly after (before) `start`, in order.

    A date the day filter rejects is skipped whole; a filter that never matches (it
    cannot for starred fields, which include the 1st and Sunday) stops after 400 years.
    """
    cursor = start
    while abs(cursor - start) < _FILTER_LIMIT:
        merged = heapq.merge(
            *(_walk(e, cursor, descending) for e in cron.walks), reverse=descending
        )
        previous: datetime | None = None
        for wall in merged:
            if wall == previous:
                continue
            previous = wall
            midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
            if cron.day_filter is None or _day_matches(cron.day_filter, midnight):
                yield wall
                continue
            cursor = midnight if descending else midnight + timedelta(days=1, minutes=-1)
            break
        else:
            return


# --- wall clock to instants ---------------------------------------------------------


def _to_utc(naive: datetime, zone: ZoneInfo) -> datetime:
    """The instant a fixed-time wall-clock time runs at (first occurrence; after a gap)."""
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _local(first, zone) == naive:
        return first  # exists; fold=0 is the first of two occurrences
    # In a gap: fold=1 reads it with the later offset (an instant before the
    # transition), fold=0 with the earlier one (after it). The first instant whose
    # wall clock is past `naive` is the transition, the first valid instant.
    lo = int(naive.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(first.timestamp()) + 1
    if lo > hi:
        lo, hi = hi, lo
    while lo < hi:
        mid = (lo + hi) // 2
        if _local(datetime.fromtimestamp(mid, UTC), zone) > naive:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)


def _readings(naive: datetime, zone: ZoneInfo) -> list[datetime]:
    """Every real instant whose wall clock shows `naive`: none in a gap, two when repeated."""
    out: list[datetime] = []
    for fold in (0, 1):
        instant = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if _local(instant, zone) == naive and instant not in out:
            out.append(instant)
    return out


def _local(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _instants(cron: _Cron, wall: datetime, zone: ZoneInfo) -> list[datetime]:
    return _readings(wall, zone) if cron.wildcard else [_to_utc(wall, zone)]


def _slack(zone: ZoneInfo, around: datetime) -> timedelta:
    """How far from a wall-clock time its instants can lie: a whole DST shift near a
    clock change, a minute (the cron granularity) where the offset is steady — walking
    three hours of minutes per step made an always-closed window take a minute to judge."""
    before = (around - _SLACK).astimezone(zone).utcoffset()
    after = (around + _SLACK).astimezone(zone).utcoffset()
    return _STEADY_SLACK if before == after == around.astimezone(zone).utcoffset() else _SLACK


def _starts_after(
    cron: _Cron, zone: ZoneInfo, after: datetime
) -> Iterator[tuple[datetime, datetime]]:
    """(wall-clock time, instant) of each cron start strictly after `after`, ascending.

    Instants of a repeated hour's second pass come after later wall-clock times, so
    they wait in a heap until no later wall-clock time can come before them: every
    instant of a later wall-clock time is at or after this one's fixed-time instant.
    """
    pending: list[tuple[datetime, datetime]] = []
    last = after
    for wall in _walls(cron, _local(after, zone) - _slack(zone, after), descending=False):
        for instant in _instants(cron, wall, zone):
            if instant > after:
                heapq.heappush(pending, (instant, wall))
        floor = _to_utc(wall, zone)
        while pending and pending[0][0] <= floor:
            instant, at_wall = heapq.heappop(pending)
            if instant > last:
                last = instant
                yield at_wall, instant
    while pending:
        instant, at_wall = heapq.heappop(pending)
        if instant > last:
            last = instant
            yield at_wall, instant


def _starts_until(
    cron: _Cron, zone: ZoneInfo, until: datetime
) -> Iterator[tuple[datetime, datetime]]:
    """(wall-clock time, instant) of each cron start at or before `until`, descending.

    The mirror of `_starts_after`: no earlier wall-clock time has an instant after
    this one's latest reading (or its fixed-time instant, in a gap).
    """
    pending: list[tuple[float, float, datetime, datetime]] = []
    last: datetime | None = None

    def pop() -> tuple[datetime, datetime]:
        _, _, instant, at_wall = heapq.heappop(pending)
        return at_wall, instant

    for wall in _walls(cron, _local(until, zone) + _slack(zone, until), descending=True):
        for instant in _instants(cron, wall, zone):
            if instant <= until:
                heapq.heappush(
                    pending,
                    (-instant.timestamp(), -(wall - _NAIVE_EPOCH).total_seconds(), instant, wall),
                )
        ceiling = max(_readings(wall, zone), default=_to_utc(wall, zone))
        while pending and pending[0][2] >= ceiling:
            at_wall, instant = pop()
            if last is None or instant < last:
                last = instant
                yield at_wall, instant
    while pending:
        at_wall, instant = pop()
        if last is None or instant < last:
            last = instant
            yield at_wall, instant


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


# --- schedules ----------------------------------------------------------------------


def next_fire_times(
    *,
    cron: str | None,
    interval: str | None,
    timezone: str | None,
    now: datetime,
    count: int = 3,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> list[datetime]:
    """The next `count` runs (UTC, strictly after `now`) within [start_at, end_at]."""
    if (cron is None) == (interval is None):
        raise ValueError("a schedule needs exactly one of `cron` or `interval`")
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    now = _aware(now, "now")
    start = _aware(start_at, "startAt") if start_at is not None else None
    end = _aware(end_at, "endAt") if end_at is not None else None
    if start is not None and end is not None and end < start:
        raise ValueError("endAt must not be before startAt")
    zone = _zone(timezone)
    out: list[datetime] = []
    if interval is not None:
        step = parse_interval(interval)
        anchor = start or _EPOCH
        k = 0 if now < anchor else (now - anchor) // step + 1
        while len(out) < count:
            at = anchor + k * step
            if end is not None and at > end:
                break
            out.append(at)
            k += 1
        return out
    assert cron is not None
    compiled = _compile(cron)
    after = now if start is None else max(now, start - timedelta(microseconds=1))
    for _, instant in _starts_after(compiled, zone, after):
        if len(out) >= count or (end is not None and instant > end):
            break
        out.append(instant)
    return out


def format_both(dt: datetime, tz: str) -> str:
    """An instant in UTC and, for a non-UTC zone, on that zone's wall clock."""
    utc = _aware(dt, "time")
    seconds = ":%S" if utc.second else ""
    text = utc.strftime(f"%Y-%m-%d %H:%M{seconds} UTC")
    if tz in _UTC_NAMES:
        return text
    try:
        zone = _zone(tz)
    except ValueError:
        return f"{text} (unknown timezone {tz!r})"
    local = utc.astimezone(zone)
    day = "" if local.date() == utc.date() else "%Y-%m-%d "
    return f"{text} ({local.strftime(f'{day}%H:%M{seconds}')} {local.tzname()} {tz})"


# --- deploy windows -----------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Active from each `cron` start in `timezone` for `duration` (wall clock)."""

    kind: Literal["allow", "deny"]
    cron: str
    duration: timedelta
    timezone: str

    def __post_init__(self) -> None:
        if self.kind not in ("allow", "deny"):
            raise ValueError(f"window kind must be allow or deny, got {self.kind!r}")
        if msg := validate_cron(self.cron):
            raise ValueError(f"{self.kind}: {msg}")
        if self.duration <= timedelta(0):
            raise ValueError(f"duration must be greater than 0, got {self.duration}")
        if msg := validate_timezone(self.timezone):
            raise ValueError(f"timezone: {msg}")


@dataclass(frozen=True)
class WindowVerdict:
    open: bool
    reason: str
    #: The window that decided it (the active deny, the missing allow, the active allow).
    window: Window | None
    #: When a closed environment opens next (None when open, or not within a year).
    next_open: datetime | None


def describe_window(w: Window) -> str:
    return f"{w.kind} window `{w.cron}` for {_format_span(w.duration)} ({w.timezone})"


def evaluate_windows(windows: Sequence[Window], now: datetime) -> WindowVerdict:
    """Open or closed at `now`: a deny window beats everything, allow windows are a whitelist."""
    now = _aware(now, "now")
    denies = [w for w in windows if w.kind == "deny"]
    allows = [w for w in windows if w.kind == "allow"]
    active_denies = [(w, span) for w in denies if (span := _active(w, now)) is not None]
    if active_denies:
        w, (since, _) = max(active_denies, key=lambda ws: ws[1][1])
        reason = f"inside {describe_window(w)}, since {_format_local(since, w.timezone)}"
        return WindowVerdict(False, reason, w, _next_open(denies, allows, now))
    if allows:
        for w in allows:
            span = _active(w, now)
            if span is not None:
                reason = f"inside {describe_window(w)}, since {_format_local(span[0], w.timezone)}"
                return WindowVerdict(True, reason, w, None)
        next_open = _next_open(denies, allows, now)
        opener = _opener(allows, next_open) if next_open is not None else allows[0]
        names = "; ".join(describe_window(w) for w in allows)
        plural = "every allow window" if len(allows) > 1 else "the allow window"
        return WindowVerdict(False, f"outside {plural}: {names}", opener, next_open)
    return WindowVerdict(True, "no deny window is active" if denies else "no windows", None, None)


def _active(w: Window, at: datetime) -> tuple[datetime, datetime] | None:
    """(start, end) of the latest occurrence of `w` covering `at`, if one does.

    Ends grow with starts, except that a wildcard start in a repeated hour's second
    pass can end before an earlier start from the first pass does: only then are
    earlier starts looked at, until their wall-clock end is hours before `at`.
    """
    zone = _zone(w.timezone)
    cron = _compile(w.cron)
    since = at - w.duration - 2 * _SLACK
    look_back = cron.wildcard and _clock_went_back(zone, since, at)
    horizon = _local(at, zone) - 2 * _SLACK
    for wall, start in _starts_until(cron, zone, at):
        end = _end(wall + w.duration, zone, start)
        if end > at:
            return start, end
        if not look_back or wall + w.duration < horizon:
            return None
    return None


def _clock_went_back(zone: ZoneInfo, since: datetime, until: datetime) -> bool:
    """Whether the zone's clocks may have been set back between the two instants."""
    if until - since > timedelta(days=28):
        return True  # long enough to hold more than one change: assume so
    offset = since.astimezone(zone).utcoffset()
    later = until.astimezone(zone).utcoffset()
    return offset is None or later is None or later < offset


def _end(wall: datetime, zone: ZoneInfo, start: datetime) -> datetime:
    """The first instant after `start` showing `wall` (the first valid one after a gap)."""
    candidates = _readings(wall, zone) or [_to_utc(wall, zone)]
    return next((c for c in candidates if c > start), candidates[-1])


def _next_open(denies: list[Window], allows: list[Window], now: datetime) -> datetime | None:
    """The first instant >= now with no deny active and (if any allow exists) an allow active."""
    t = now
    limit = now + _HORIZON
    for _ in range(_MAX_STEPS):
        if t > limit:
            return None
        ends = [span[1] for w in denies if (span := _active(w, t)) is not None]
        if ends:
            t = max(ends)  # every deny active now lasts until then
            continue
        if allows and all(_active(w, t) is None for w in allows):
            starts = [s for w in allows if (s := _next_start(w, t)) is not None]
            if not starts:
                return None
            t = min(starts)
            continue
        return t
    return None


def _next_start(w: Window, after: datetime) -> datetime | None:
    for _, instant in _starts_after(_compile(w.cron), _zone(w.timezone), after):
        return instant
    return None


def _opener(allows: list[Window], at: datetime) -> Window:
    for w in allows:
        if _active(w, at) is not None:
            return w
    return allows[0]  # pragma: no cover - `at` is inside some allow window by construction


def _format_local(instant: datetime, tz: str) -> str:
    local = instant.astimezone(_zone(tz))
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def _format_span(value: timedelta) -> str:
    total = int(value.total_seconds())
    parts = []
    for unit, size in _UNITS.items():
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts) or f"{value.total_seconds()}s"


# --- a recorded or planned schedule spec ---------------------------------------------


def spec_next_runs(spec: Mapping[str, Any], now: datetime, count: int) -> list[datetime]:
    """When a Schedule instance's spec (camelCase body) runs next; none when it cannot
    be read (a plan or status shows no times rather than failing)."""

    def ts(value: Any) -> datetime | None:
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    try:
        return next_fire_times(
            cron=spec.get("cron"),
            interval=spec.get("interval"),
            timezone=spec.get("timezone") or "UTC",
            now=now,
            count=count,
            start_at=ts(spec.get("startAt")),
            end_at=ts(spec.get("endAt")),
        )
    except ValueError:
        return []
