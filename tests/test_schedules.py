"""Cron, interval, timezone and deploy-window semantics, on fixed clocks only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.schedules import (
    Window,
    describe_window,
    evaluate_windows,
    format_both,
    next_fire_times,
    parse_duration,
    parse_interval,
    validate_cron,
    validate_timezone,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def fires(
    cron: str, tz: str, now: datetime, count: int = 3, **kw: datetime | None
) -> list[datetime]:
    return next_fire_times(cron=cron, interval=None, timezone=tz, now=now, count=count, **kw)


def wall(times: list[datetime], zone: ZoneInfo) -> list[str]:
    """Local wall-clock renderings, with the zone abbreviation to show the offset used."""
    return [t.astimezone(zone).strftime("%m-%d %H:%M %Z") for t in times]


# --- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 25 * * *", "hour field must be 0-23, got 25"),
        ("60 * * * *", "minute field must be 0-59, got 60"),
        ("0 0 0 * *", "day-of-month field must be 1-31, got 0"),
        ("0 0 * 13 *", "month field must be 1-12, got 13"),
        ("0 0 * * 8", "day-of-week field must be 0-7, got 8"),
        ("0 0 * * FRY", "day-of-week field: unknown name 'fry'"),
        ("*/0 * * * *", "minute field step must be at least 1, got 0"),
        ("0 0 * * 1#6", "day-of-week field: #6 must be #1-#5"),
        ("H 0 * * *", "minute field: cannot read 'H'"),
        ("0 0 0 * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6; "),
        ("0 0 0 * * * 2027", "expected 5 fields"),
        ("0 0 * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("", "cron expression is empty"),
        ("@reboot", "unknown macro '@reboot'"),
        ("0 0 30 2 *", "never fires: day 30 does not occur in Feb"),
        ("0 0 31 4,6 *", "never fires: day 31 does not occur in Apr, Jun"),
    ],
)
def test_validate_cron_names_the_problem(expr: str, message: str) -> None:
    got = validate_cron(expr)
    assert got is not None and got.startswith(message), got


def test_seconds_field_is_refused_with_a_reason() -> None:
    assert validate_cron("*/10 * * * * *") == (
        "expected 5 fields (minute hour day-of-month month day-of-week), got 6; "
        "seconds and years are not supported"
    )


@pytest.mark.parametrize(
    "expr",
    [
        "0 2 * * *",
        "0 17 * * FRI",
        "*/15 9-17 * * mon-fri",
        "0 0 29 2 *",
        "0 0 L * *",
        "0 0 * * 5#2",
        "0 0 * * 7",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@midnight",
        "@DAILY",
    ],
)
def test_validate_cron_accepts_valid(expr: str) -> None:
    assert validate_cron(expr) is None


def test_validate_timezone() -> None:
    assert validate_timezone("Europe/Berlin") is None
    assert validate_timezone("UTC") is None
    assert validate_timezone("America/New_York") is None
    assert validate_timezone("Europe/Berln") == (
        "unknown timezone 'Europe/Berln'; did you mean 'Europe/Berlin'?"
    )
    assert validate_timezone("america/new_york") == (
        "unknown timezone 'america/new_york'; did you mean 'America/New_York'?"
    )
    assert validate_timezone("Mars/Olympus_Mons") == (
        "unknown timezone 'Mars/Olympus_Mons'; use an IANA name such as 'Europe/Berlin' or 'UTC'"
    )
    assert validate_timezone("") is not None
    assert validate_timezone("../../etc/passwd") is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("2d 12h", timedelta(hours=60)),
        ("1m", timedelta(minutes=1)),
    ],
)
def test_parse_interval(text: str, expected: timedelta) -> None:
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30s", "interval must be at least 1m, got 30s"),
        ("59s", "interval must be at least 1m, got 59s"),
        ("0m", "interval must be greater than 0, got 0m"),
        ("-5m", "interval must be positive, got -5m"),
        ("6 hours", "interval '6 hours' is not a duration: use numbers with units d, h, m, s"),
        ("30m1h", "interval '30m1h' is not a duration"),
        ("", "interval '' is not a duration"),
        ("99999999999d", "interval 99999999999d is too long"),
    ],
)
def test_parse_interval_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_interval(text)
    assert str(e.value).startswith(message), str(e.value)


def test_parse_duration() -> None:
    assert parse_duration("64h") == timedelta(hours=64)
    assert parse_duration("2d12h") == timedelta(days=2, hours=12)
    assert parse_duration("30s") == timedelta(seconds=30)  # no one-minute floor for windows
    for bad, message in [("0h", "greater than 0"), ("-1h", "positive"), ("soon", "not a")]:
        with pytest.raises(ValueError, match=message):
            parse_duration(bad)


# --- cron across DST ----------------------------------------------------------------


def test_berlin_spring_forward_daily_0230_runs_once_at_0300() -> None:
    got = fires("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12))
    assert got == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]
    assert wall(got, BERLIN) == ["03-29 03:00 CEST", "03-30 02:30 CEST", "03-31 02:30 CEST"]


def test_berlin_fall_back_daily_0230_runs_once_at_first_occurrence() -> None:
    got = fires("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12))
    assert got == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]
    assert wall(got, BERLIN) == ["10-25 02:30 CEST", "10-26 02:30 CET", "10-27 02:30 CET"]
    # Asked during the repeated hour (02:10 CET, the second pass): 02:30 already ran.
    assert fires("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 10), count=1) == [
        utc(2026, 10, 26, 1, 30)
    ]


def test_berlin_hourly_across_spring_forward() -> None:
    got = fires("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 30), count=4)
    assert wall(got, BERLIN) == [
        "03-29 01:00 CET",
        "03-29 03:00 CEST",  # the missing 02:00 and the real 03:00 are one run
        "03-29 04:00 CEST",
        "03-29 05:00 CEST",
    ]
    assert got[1] - got[0] == timedelta(hours=1)


def test_berlin_wildcard_crons_run_through_the_repeated_hour() -> None:
    # cronie: a cron whose minute or hour starts with `*` runs whenever the wall
    # clock matches, so the repeated hour 02:00-03:00 runs twice (CEST, then CET).
    got = fires("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 30), count=4)
    assert wall(got, BERLIN) == [
        "10-25 02:00 CEST",
        "10-25 02:00 CET",
        "10-25 03:00 CET",
        "10-25 04:00 CET",
    ]
    assert got == [utc(2026, 10, 25, h) for h in (0, 1, 2, 3)]
    assert fires("@hourly", "Europe/Berlin", utc(2026, 10, 24, 23, 30), count=4) == got
    quarter = fires("*/15 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 50), count=10)
    assert wall(quarter, BERLIN) == [
        "10-25 02:00 CEST",
        "10-25 02:15 CEST",
        "10-25 02:30 CEST",
        "10-25 02:45 CEST",
        "10-25 02:00 CET",
        "10-25 02:15 CET",
        "10-25 02:30 CET",
        "10-25 02:45 CET",
        "10-25 03:00 CET",
        "10-25 03:15 CET",
    ]
    assert {b - a for a, b in pairwise(quarter)} == {timedelta(minutes=15)}
    # asked during the second pass, the next run is the next quarter of that pass
    assert fires("*/15 * * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 5), count=1) == [
        utc(2026, 10, 25, 1, 15)
    ]


def test_berlin_wildcard_crons_skip_the_missing_hour() -> None:
    # 02:00-03:00 does not exist on 2026-03-29: nothing runs at a time that never shows.
    half = fires("30 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 50), count=3)
    assert wall(half, BERLIN) == ["03-29 01:30 CET", "03-29 03:30 CEST", "03-29 04:30 CEST"]
    assert half[1] - half[0] == timedelta(hours=1)
    # minute starred, hour fixed: every minute of 02:xx, twice on fall-back night,
    # not at all on spring-forward night
    autumn = fires("* 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), count=200)
    assert sum(t.date() == utc(2026, 10, 25).date() for t in autumn) == 120
    assert autumn[59] == utc(2026, 10, 25, 0, 59) and autumn[60] == utc(2026, 10, 25, 1, 0)
    spring = fires("* 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12), count=1)
    assert wall(spring, BERLIN) == ["03-30 02:00 CEST"]


def test_fixed_time_crons_keep_their_rules() -> None:
    # Minute and hour not starred (ranges and lists included): once per day.
    ranged = fires("0 0-23 * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 30), count=3)
    assert wall(ranged, BERLIN) == ["10-25 02:00 CEST", "10-25 03:00 CET", "10-25 04:00 CET"]
    listed = fires("0,30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12), count=2)
    assert wall(listed, BERLIN) == ["03-29 03:00 CEST", "03-30 02:00 CEST"]


def test_new_york_spring_forward() -> None:
    daily = fires("30 2 * * *", "America/New_York", utc(2026, 3, 7, 12))
    assert daily == [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30)]
    assert wall(daily, NEW_YORK)[0] == "03-08 03:00 EDT"
    hourly = fires("0 * * * *", "America/New_York", utc(2026, 3, 8, 5, 30), count=3)
    assert wall(hourly, NEW_YORK) == ["03-08 01:00 EST", "03-08 03:00 EDT", "03-08 04:00 EDT"]


def test_new_york_fall_back() -> None:
    # In New York the repeated hour is 01:00-02:00; 02:30 exists once.
    ambiguous = fires("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12))
    assert wall(ambiguous, NEW_YORK) == ["11-01 01:30 EDT", "11-02 01:30 EST", "11-03 01:30 EST"]
    assert ambiguous[0] == utc(2026, 11, 1, 5, 30)
    daily = fires("30 2 * * *", "America/New_York", utc(2026, 10, 31, 12), count=2)
    assert daily == [utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)]
    # wildcard: the repeated 01:00 runs in both passes, an hour apart
    hourly = fires("0 * * * *", "America/New_York", utc(2026, 11, 1, 4, 30), count=3)
    assert wall(hourly, NEW_YORK) == ["11-01 01:00 EDT", "11-01 01:00 EST", "11-01 02:00 EST"]
    assert hourly == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)]


def test_new_york_wildcard_spring_forward() -> None:
    half = fires("30 * * * *", "America/New_York", utc(2026, 3, 8, 5, 50), count=3)
    assert wall(half, NEW_YORK) == ["03-08 01:30 EST", "03-08 03:30 EDT", "03-08 04:30 EDT"]


LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def test_lord_howe_half_hour_changes() -> None:
    # 2026-04-05: 02:00 LHDT (+11) becomes 01:30 LHST (+10:30), so 01:30-02:00 repeats.
    quarter = fires("*/15 * * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 14, 20), count=5)
    assert quarter == [utc(2026, 4, 4, 14, m) for m in (30, 45)] + [
        utc(2026, 4, 4, 15, m) for m in (0, 15, 30)
    ]
    local = [t.astimezone(LORD_HOWE).strftime("%H:%M") for t in quarter]
    assert local == ["01:30", "01:45", "01:30", "01:45", "02:00"]
    fixed = fires("45 1 * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 12), count=2)
    assert fixed == [utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)]  # first pass only
    # 2026-10-04: 02:00 LHST (+10:30) becomes 02:30 LHDT (+11); 02:00-02:30 is missing.
    hourly = fires("0 * * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 14), count=2)
    assert hourly == [utc(2026, 10, 3, 14, 30), utc(2026, 10, 3, 16)]  # 01:00, 03:00
    gap = fires("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 12), count=1)
    assert gap == [utc(2026, 10, 3, 15, 30)]  # 02:30 LHDT, the first valid instant


# --- calendar -----------------------------------------------------------------------


def test_leap_day() -> None:
    assert fires("0 0 29 2 *", "UTC", utc(2027, 1, 1), count=2) == [
        utc(2028, 2, 29),
        utc(2032, 2, 29),
    ]


def test_month_ends_skip_short_months() -> None:
    got = fires("0 0 31 * *", "UTC", utc(2026, 1, 1), count=5)
    assert [t.month for t in got] == [1, 3, 5, 7, 8]
    assert all(t.day == 31 for t in got)


def days(cron: str, count: int = 8) -> list[str]:
    """Run dates from 2026-01-01 (a Thursday) on, as 'MM-DD Dow'."""
    return [t.strftime("%m-%d %a") for t in fires(cron, "UTC", utc(2025, 12, 31, 12), count)]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        # day-of-week starts with `*`: both fields must match, so the 1st only
        ("0 0 1 * */1", ["01-01 Thu", "02-01 Sun", "03-01 Sun", "04-01 Wed"]),
        ("0 0 1 * *", ["01-01 Thu", "02-01 Sun", "03-01 Sun", "04-01 Wed"]),
        ("@monthly", ["01-01 Thu", "02-01 Sun", "03-01 Sun", "04-01 Wed"]),
        # day-of-month starts with `*`: Mondays that are odd days
        ("0 0 */2 * 1", ["01-05 Mon", "01-19 Mon", "02-09 Mon", "02-23 Mon"]),
        ("0 0 * * 1", ["01-05 Mon", "01-12 Mon", "01-19 Mon", "01-26 Mon"]),
        ("0 0 ? * MON", ["01-05 Mon", "01-12 Mon", "01-19 Mon", "01-26 Mon"]),
        # both starred: odd days that are Sundays
        ("0 0 */2 * */7", ["01-11 Sun", "01-25 Sun", "02-01 Sun", "02-15 Sun"]),
        # neither starts with `*`: either field (crontab(5): the 1st, the 15th, Fridays)
        (
            "30 4 1,15 * 5",
            ["01-01 Thu", "01-02 Fri", "01-09 Fri", "01-15 Thu", "01-16 Fri", "01-23 Fri"],
        ),
        ("0 0 1-31 * 1", ["01-01 Thu", "01-02 Fri", "01-03 Sat", "01-04 Sun"]),
        ("0 0 15 * 5#2", ["01-09 Fri", "01-15 Thu", "02-13 Fri", "02-15 Sun"]),
        (
            "0 0 L * 5",
            ["01-02 Fri", "01-09 Fri", "01-16 Fri", "01-23 Fri", "01-30 Fri", "01-31 Sat"],
        ),
    ],
)
def test_day_of_month_and_day_of_week_combine_as_vixie_cron(cron: str, expected: list[str]) -> None:
    assert days(cron, len(expected)) == expected


def test_one_value_ranges_are_that_value() -> None:
    # croniter alone reads `5-5` as `*` (found by the cronie property below).
    assert fires("5-5 * * * *", "UTC", utc(2026, 1, 1), count=2) == [
        utc(2026, 1, 1, 0, 5),
        utc(2026, 1, 1, 1, 5),
    ]
    assert days("0 0 * * 0-0", 2) == ["01-04 Sun", "01-11 Sun"]


def test_starred_day_of_week_cannot_rescue_a_missing_day() -> None:
    assert validate_cron("0 0 30 2 */2") == "never fires: day 30 does not occur in Feb"
    assert validate_cron("0 0 30 2 5") is None  # either field: every Friday in February


def test_weekly_and_daily_macros_in_a_zone() -> None:
    # 2026-01-07 is a Wednesday; @weekly is Sunday midnight.
    assert fires("@weekly", "UTC", utc(2026, 1, 7), count=2) == [utc(2026, 1, 11), utc(2026, 1, 18)]
    assert fires("@weekly", "Europe/Berlin", utc(2026, 1, 7), count=1) == [utc(2026, 1, 10, 23)]
    # Midnight in Berlin is 23:00 UTC in winter and 22:00 UTC in summer.
    assert fires("@daily", "Europe/Berlin", utc(2026, 1, 15, 12), count=2) == [
        utc(2026, 1, 15, 23),
        utc(2026, 1, 16, 23),
    ]
    assert fires("@daily", "Europe/Berlin", utc(2026, 7, 15, 12), count=1) == [utc(2026, 7, 15, 22)]
    assert fires("0 17 * * FRI", "Europe/Berlin", utc(2026, 1, 7), count=1) == [utc(2026, 1, 9, 16)]


def test_fire_times_are_strictly_after_now_and_default_to_utc() -> None:
    got = next_fire_times(
        cron="0 2 * * *", interval=None, timezone=None, now=utc(2026, 5, 1, 2), count=1
    )
    assert got == [utc(2026, 5, 2, 2)]
    assert all(t.tzinfo is UTC for t in fires("0 2 * * *", "Europe/Berlin", utc(2026, 5, 1)))


def test_start_at_and_end_at_bound_cron() -> None:
    start = datetime(2026, 6, 10, 9, 0, tzinfo=BERLIN)
    end = datetime(2026, 6, 12, 9, 0, tzinfo=BERLIN)
    got = fires("0 9 * * *", "Europe/Berlin", utc(2026, 6, 1), count=10, start_at=start, end_at=end)
    # start and end are inclusive; nothing before or after.
    assert got == [utc(2026, 6, 10, 7), utc(2026, 6, 11, 7), utc(2026, 6, 12, 7)]
    after_end = fires("0 9 * * *", "Europe/Berlin", utc(2026, 6, 13), end_at=end)
    assert after_end == []


# --- intervals ----------------------------------------------------------------------


def every(interval: str, now: datetime, count: int = 3, **kw: datetime | None) -> list[datetime]:
    return next_fire_times(
        cron=None, interval=interval, timezone="Europe/Berlin", now=now, count=count, **kw
    )


def test_interval_is_anchored_at_the_epoch_and_stable() -> None:
    got = every("6h", utc(2026, 3, 28, 20, 17))
    assert got == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 6), utc(2026, 3, 29, 12)]
    assert every("6h", utc(2026, 3, 29, 0, 0), count=2) == got[1:]  # strictly after now
    assert every("6h", utc(2026, 3, 28, 19), count=1) == got[:1]


def test_interval_across_dst_is_elapsed_time() -> None:
    start = datetime(2026, 3, 28, 22, 0, tzinfo=BERLIN)  # 21:00 UTC, the evening before
    got = every("6h", utc(2026, 3, 28), count=4, start_at=start)
    assert got[0] == start
    assert [b - a for a, b in pairwise(got)] == [timedelta(hours=6)] * 3
    # The wall clock jumps: 22:00 CET, 05:00 CEST (not 04:00), 11:00, 17:00.
    assert wall(got, BERLIN) == [
        "03-28 22:00 CET",
        "03-29 05:00 CEST",
        "03-29 11:00 CEST",
        "03-29 17:00 CEST",
    ]
    fall = every("6h", utc(2026, 10, 24, 20), count=3)
    assert [b - a for a, b in pairwise(fall)] == [timedelta(hours=6)] * 2


def test_interval_start_and_end() -> None:
    start = utc(2026, 1, 1, 0, 7)
    assert every("30m", utc(2026, 1, 1, 0, 40), start_at=start) == [
        utc(2026, 1, 1, 1, 7),
        utc(2026, 1, 1, 1, 37),
        utc(2026, 1, 1, 2, 7),
    ]
    assert every("30m", utc(2026, 1, 1, 0, 40), start_at=start, end_at=utc(2026, 1, 1, 1, 37)) == [
        utc(2026, 1, 1, 1, 7),
        utc(2026, 1, 1, 1, 37),
    ]
    assert every("1d", utc(2025, 12, 1), count=1, start_at=start) == [start]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"cron": "0 * * * *", "interval": "1h"}, "exactly one of"),
        ({"cron": None, "interval": None}, "exactly one of"),
        ({"cron": "0 25 * * *", "interval": None}, "hour field must be 0-23"),
        ({"cron": None, "interval": "30s"}, "at least 1m"),
        ({"cron": "0 * * * *", "interval": None, "timezone": "Europe/Berln"}, "did you mean"),
        ({"cron": "0 * * * *", "interval": None, "now": datetime(2026, 1, 1)}, "timezone-aware"),
        (
            {
                "cron": "0 * * * *",
                "interval": None,
                "start_at": utc(2026, 2, 1),
                "end_at": utc(2026, 1, 1),
            },
            "endAt must not be before startAt",
        ),
    ],
)
def test_next_fire_times_refuses_bad_input(kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"timezone": "UTC", "now": utc(2026, 1, 1), **kw}
    with pytest.raises(ValueError, match=message):
        next_fire_times(**args)  # type: ignore[arg-type]


# --- formatting ---------------------------------------------------------------------


def test_format_both() -> None:
    assert format_both(utc(2026, 11, 24, 1), "Europe/Berlin") == (
        "2026-11-24 01:00 UTC (02:00 CET Europe/Berlin)"
    )
    assert format_both(utc(2026, 11, 24, 1), "UTC") == "2026-11-24 01:00 UTC"
    assert format_both(utc(2026, 7, 1, 23, 30), "Europe/Berlin") == (
        "2026-07-01 23:30 UTC (2026-07-02 01:30 CEST Europe/Berlin)"
    )
    later = datetime(2026, 11, 24, 2, 0, tzinfo=BERLIN)
    assert format_both(later, "America/New_York") == (
        "2026-11-24 01:00 UTC (2026-11-23 20:00 EST America/New_York)"
    )


# --- deploy windows -----------------------------------------------------------------

FREEZE = Window("deny", "0 18 * * 5", timedelta(days=2, hours=12), "Europe/Berlin")
OFFICE = Window("allow", "0 9 * * 1-5", timedelta(hours=8), "Europe/Berlin")


def test_describe_window() -> None:
    assert describe_window(FREEZE) == "deny window `0 18 * * 5` for 2d 12h (Europe/Berlin)"
    assert describe_window(OFFICE) == "allow window `0 9 * * 1-5` for 8h (Europe/Berlin)"


def test_no_windows_is_open() -> None:
    v = evaluate_windows([], utc(2026, 1, 1))
    assert v.open and v.next_open is None and v.window is None


def test_deny_window_spanning_midnight() -> None:
    night = Window("deny", "0 22 * * *", timedelta(hours=4), "UTC")
    assert evaluate_windows([night], utc(2026, 5, 4, 21, 59)).open
    late = evaluate_windows([night], utc(2026, 5, 4, 23, 30))
    assert not late.open and late.next_open == utc(2026, 5, 5, 2)
    assert late.window == night
    early = evaluate_windows([night], utc(2026, 5, 5, 1, 30))  # after midnight, same window
    assert not early.open and early.next_open == utc(2026, 5, 5, 2)
    assert "since 2026-05-04 22:00 UTC" in early.reason
    assert evaluate_windows([night], utc(2026, 5, 5, 2)).open  # the end is exclusive


def test_weekend_freeze() -> None:
    saturday = evaluate_windows([FREEZE], utc(2026, 11, 21, 12))
    assert not saturday.open
    assert saturday.reason == (
        "inside deny window `0 18 * * 5` for 2d 12h (Europe/Berlin), since 2026-11-20 18:00 CET"
    )
    assert saturday.window == FREEZE
    assert saturday.next_open == datetime(2026, 11, 23, 6, 0, tzinfo=BERLIN)
    assert saturday.next_open is not None and saturday.next_open.tzinfo is UTC
    assert evaluate_windows([FREEZE], datetime(2026, 11, 20, 17, 59, tzinfo=BERLIN)).open
    assert not evaluate_windows([FREEZE], datetime(2026, 11, 20, 18, 0, tzinfo=BERLIN)).open
    assert evaluate_windows([FREEZE], datetime(2026, 11, 23, 6, 0, tzinfo=BERLIN)).open


def test_weekend_freeze_ends_on_the_wall_clock_across_dst() -> None:
    # Clocks go forward on Sunday 2026-03-29 and back on Sunday 2026-10-25.
    spring = evaluate_windows([FREEZE], utc(2026, 3, 28, 12))
    assert spring.next_open == datetime(2026, 3, 30, 6, 0, tzinfo=BERLIN)
    assert spring.next_open == utc(2026, 3, 30, 4)
    fall = evaluate_windows([FREEZE], utc(2026, 10, 24, 12))
    assert fall.next_open == utc(2026, 10, 26, 5)
    assert wall([fall.next_open], BERLIN) == ["10-26 06:00 CET"]


def test_wildcard_windows_start_in_both_passes_of_a_repeated_hour() -> None:
    # The first quarter of every hour is frozen, in summer and in winter time alike.
    quarter = Window("deny", "0 * * * *", timedelta(minutes=15), "Europe/Berlin")
    second_pass = evaluate_windows([quarter], utc(2026, 10, 25, 1, 5))  # 02:05 CET
    assert not second_pass.open and second_pass.next_open == utc(2026, 10, 25, 1, 15)
    assert "since 2026-10-25 02:00 CET" in second_pass.reason
    assert not evaluate_windows([quarter], utc(2026, 10, 25, 0, 5)).open  # 02:05 CEST
    assert evaluate_windows([quarter], utc(2026, 10, 25, 0, 20)).open
    # A start in the first pass ends later (03:15 on the wall clock, CET) than the next
    # start in the second pass: the earlier occurrence still covers the instant.
    chained = Window("deny", "0,45 * * * *", timedelta(minutes=30), "Europe/Berlin")
    verdict = evaluate_windows([chained], utc(2026, 10, 25, 1, 40))  # 02:40 CET
    assert not verdict.open
    assert "since 2026-10-25 02:45 CEST" in verdict.reason


def test_windows_use_the_vixie_day_rule() -> None:
    first_only = Window("deny", "0 0 1 * */1", timedelta(hours=1), "UTC")
    assert evaluate_windows([first_only], utc(2026, 1, 2, 0, 30)).open
    monthly = evaluate_windows([first_only], utc(2026, 2, 1, 0, 30))
    assert not monthly.open and monthly.next_open == utc(2026, 2, 1, 1)
    odd_mondays = Window("allow", "0 9 */2 * 1", timedelta(hours=8), "UTC")
    closed = evaluate_windows([odd_mondays], utc(2026, 1, 12, 10))  # an even Monday
    assert not closed.open and closed.next_open == utc(2026, 1, 19, 9)


def test_allow_only_windows() -> None:
    sunday = evaluate_windows([OFFICE], datetime(2026, 11, 22, 12, 0, tzinfo=BERLIN))
    assert not sunday.open
    assert sunday.next_open == datetime(2026, 11, 23, 9, 0, tzinfo=BERLIN)
    assert (
        sunday.reason
        == "outside the allow window: allow window `0 9 * * 1-5` for 8h (Europe/Berlin)"
    )
    assert sunday.window == OFFICE
    monday = evaluate_windows([OFFICE], datetime(2026, 11, 23, 12, 0, tzinfo=BERLIN))
    assert monday.open and monday.window == OFFICE and monday.next_open is None
    assert "since 2026-11-23 09:00 CET" in monday.reason
    evening = evaluate_windows([OFFICE], datetime(2026, 11, 23, 17, 0, tzinfo=BERLIN))
    assert not evening.open
    assert evening.next_open == datetime(2026, 11, 24, 9, 0, tzinfo=BERLIN)
    friday = evaluate_windows([OFFICE], datetime(2026, 11, 27, 18, 0, tzinfo=BERLIN))
    assert friday.next_open == datetime(2026, 11, 30, 9, 0, tzinfo=BERLIN)


def test_allow_and_deny_together() -> None:
    lunch = Window("deny", "0 12 * * *", timedelta(hours=1), "Europe/Berlin")
    at_lunch = evaluate_windows([OFFICE, lunch], datetime(2026, 11, 23, 12, 30, tzinfo=BERLIN))
    assert not at_lunch.open and at_lunch.window == lunch
    assert at_lunch.next_open == datetime(2026, 11, 23, 13, 0, tzinfo=BERLIN)
    # A deny covering the allow window's start pushes the opening to when it ends.
    standup = Window("deny", "0 8 * * 1", timedelta(hours=2), "Europe/Berlin")
    sunday = evaluate_windows([OFFICE, standup], datetime(2026, 11, 22, 12, 0, tzinfo=BERLIN))
    assert not sunday.open
    assert sunday.next_open == datetime(2026, 11, 23, 10, 0, tzinfo=BERLIN)
    # A deny ending after the allow window closed: the next day's allow start.
    late = Window("deny", "0 16 * * *", timedelta(hours=2), "Europe/Berlin")
    v = evaluate_windows([OFFICE, late], datetime(2026, 11, 23, 16, 30, tzinfo=BERLIN))
    assert v.next_open == datetime(2026, 11, 24, 9, 0, tzinfo=BERLIN)


def test_chained_deny_windows() -> None:
    monday_morning = Window("deny", "0 6 * * 1", timedelta(hours=2), "Europe/Berlin")
    v = evaluate_windows([FREEZE, monday_morning], utc(2026, 11, 21, 12))
    assert not v.open
    assert v.next_open == datetime(2026, 11, 23, 8, 0, tzinfo=BERLIN)


def test_never_opening_is_bounded() -> None:
    always = Window("deny", "0 0 * * *", timedelta(days=2), "UTC")
    v = evaluate_windows([always], utc(2026, 1, 1, 12))
    assert not v.open and v.next_open is None


def test_window_rejects_bad_parts() -> None:
    with pytest.raises(ValueError, match="hour field"):
        Window("deny", "0 25 * * *", timedelta(hours=1), "UTC")
    with pytest.raises(ValueError, match="greater than 0"):
        Window("deny", "0 1 * * *", timedelta(0), "UTC")
    with pytest.raises(ValueError, match="did you mean"):
        Window("deny", "0 1 * * *", timedelta(hours=1), "Europe/Berln")
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_windows([FREEZE], datetime(2026, 1, 1))


# --- property: the same runs as cronie's minute loop ---------------------------------

# A cron field in a small grammar, parsed here independently of the code under test.
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def _field(index: int) -> st.SearchStrategy[str]:
    low, high = _BOUNDS[index]
    value = st.integers(low, high)
    step = st.integers(1, high - low + 1)
    span = st.tuples(value, value).map(lambda ab: f"{min(ab)}-{max(ab)}")
    plain = st.one_of(value.map(str), span)
    return st.one_of(
        st.just("*"),
        step.map(lambda s: f"*/{s}"),
        st.lists(plain, min_size=1, max_size=3).map(",".join),
    )


def _values(text: str, index: int) -> set[int]:
    low, high = _BOUNDS[index]
    out: set[int] = set()
    for part in text.split(","):
        body, _, step = part.partition("/")
        first, last = (low, high) if body == "*" else map(int, (body.split("-") * 2)[:2])
        out.update(range(first, last + 1, int(step or 1)))
    return out


def _cronie_runs(cron: str, zone: ZoneInfo, start: datetime, minutes: int) -> list[datetime]:
    """cron.c's main loop, one real minute at a time (no jumps over 3 hours here).

    The wall clock one minute ahead of the last one: everything matching runs. Ahead
    by more: starred jobs for this minute, fixed-time jobs for every minute skipped
    (run now). Behind or equal (a repeated hour): starred jobs only, and the
    virtual clock waits until the wall clock catches up.
    """
    fields = cron.split()
    sets = [_values(f, i) for i, f in enumerate(fields)]
    starred = fields[0].startswith("*") or fields[1].startswith("*")
    either = not fields[2].startswith("*") and not fields[4].startswith("*")

    def matches(w: datetime) -> bool:
        dom, dow = w.day in sets[2], (w.isoweekday() % 7) in sets[4]
        return (
            w.minute in sets[0]
            and w.hour in sets[1]
            and w.month in sets[3]
            and (dom or dow if either else dom and dow)
        )

    runs: list[datetime] = []
    virtual = start.astimezone(zone).replace(tzinfo=None) - timedelta(minutes=1)
    for k in range(minutes):
        now = start + timedelta(minutes=k)
        w = now.astimezone(zone).replace(tzinfo=None)
        if starred and matches(w):
            runs.append(now)
        if not starred:
            while virtual < w:
                virtual += timedelta(minutes=1)
                if matches(virtual) and (not runs or runs[-1] != now):
                    runs.append(now)
    return runs


@settings(max_examples=60, deadline=None)
@given(
    fields=st.tuples(*(_field(i) for i in range(5))),
    case=st.sampled_from(
        [
            ("Europe/Berlin", utc(2026, 3, 28, 12)),
            ("Europe/Berlin", utc(2026, 10, 24, 12)),
            ("America/New_York", utc(2026, 3, 7, 18)),
            ("America/New_York", utc(2026, 10, 31, 18)),
            ("Australia/Lord_Howe", utc(2026, 4, 4, 3)),
            ("Australia/Lord_Howe", utc(2026, 10, 3, 3)),
        ]
    ),
)
def test_runs_match_cronies_minute_loop_around_dst(
    fields: tuple[str, ...], case: tuple[str, datetime]
) -> None:
    cron = " ".join(fields)
    if validate_cron(cron) is not None:
        return  # e.g. day 31 in a month without one: refused, nothing to compare
    tz, start = case
    minutes = 36 * 60
    expected = _cronie_runs(cron, ZoneInfo(tz), start, minutes)
    got = fires(cron, tz, start - timedelta(microseconds=1), count=len(expected) + 1)
    assert [t for t in got if t < start + timedelta(minutes=minutes)] == expected
