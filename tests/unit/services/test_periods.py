from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from vmbackup.services.periods import (
    MAX_DURATION,
    PERIODS,
    duration_problem,
    index_after,
    next_after,
    occurrence,
    runs_problem,
    start_problem,
)

UTCZ = ZoneInfo("UTC")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_month_ends_clamp_without_drifting():
    anchor = utc(2023, 1, 31, 2, 0)
    runs = [occurrence(anchor, UTCZ, "months", 1, k) for k in range(4)]
    assert [r.date().isoformat() for r in runs] == ["2023-01-31", "2023-02-28", "2023-03-31", "2023-04-30"]


def test_leap_years():
    anchor = utc(2024, 2, 29, 3, 0)
    assert occurrence(anchor, UTCZ, "years", 1, 1) == utc(2025, 2, 28, 3, 0)
    assert occurrence(anchor, UTCZ, "years", 1, 4) == utc(2028, 2, 29, 3, 0)
    assert occurrence(utc(2024, 1, 31), UTCZ, "months", 1, 1) == utc(2024, 2, 29)


def test_daily_run_keeps_local_wall_time_across_dst():
    berlin = ZoneInfo("Europe/Berlin")
    anchor = datetime(2024, 3, 30, 3, 0, tzinfo=berlin).astimezone(UTC)  # clocks go forward on 31 March
    runs = [occurrence(anchor, berlin, "days", 1, k).astimezone(berlin) for k in range(3)]
    assert [r.hour for r in runs] == [3, 3, 3]
    assert [r.utcoffset() for r in runs] == [timedelta(hours=1), timedelta(hours=2), timedelta(hours=2)]


def test_every_two_weeks():
    anchor = utc(2024, 1, 1, 4, 0)
    assert next_after(anchor, UTCZ, "weeks", 2, utc(2024, 1, 1, 4, 0)) == utc(2024, 1, 15, 4, 0)
    assert next_after(anchor, UTCZ, "weeks", 2, utc(2024, 1, 10)) == utc(2024, 1, 15, 4, 0)


def test_missed_runs_collapse_to_the_next_one():
    anchor = utc(2024, 1, 1, 2, 0)
    # the service was down for 10 days: the next run is tomorrow's, not ten catch-up runs
    assert next_after(anchor, UTCZ, "days", 1, utc(2024, 1, 11, 12, 0)) == utc(2024, 1, 12, 2, 0)


zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])


@given(
    anchor=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    offset_hours=st.integers(min_value=-1000, max_value=100_000),
    period=st.sampled_from(PERIODS),
    duration=st.integers(min_value=1, max_value=12),
    zone=zones,
)
def test_next_after_is_the_first_run_later_than_the_given_time(anchor, offset_hours, period, duration, zone):
    tz = ZoneInfo(zone)
    after = anchor + timedelta(hours=offset_hours)
    k = index_after(anchor, tz, period, duration, after)
    nxt = next_after(anchor, tz, period, duration, after)
    assert nxt == occurrence(anchor, tz, period, duration, k) and nxt > after
    assert k == 0 or occurrence(anchor, tz, period, duration, k - 1) <= after
    assert nxt - after <= timedelta(days=366 * duration + 1)


@given(
    anchor=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)),
    after=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2500, 1, 1), timezones=st.just(UTC)),
    period=st.sampled_from(PERIODS),
    fraction=st.floats(min_value=0, max_value=1),
    zone=zones,
)
def test_every_accepted_schedule_has_computable_runs(anchor, after, period, fraction, zone):
    # What the validation promises the scheduler: any start and duration it accepts has next runs for centuries.
    duration = max(1, round(MAX_DURATION[period] * fraction))
    assert start_problem(anchor) is None and duration_problem(period, duration) is None
    assert runs_problem(anchor, ZoneInfo(zone), period, duration, after) is None


def test_limits_of_accepted_schedules():
    assert duration_problem("years", 10) is None
    assert duration_problem("years", 11) == "must be between 1 and 10 for period years"
    assert duration_problem("days", 0) is not None
    assert start_problem(utc(1970, 1, 1)) is None and start_problem(utc(1969, 12, 31, 23, 59)) is not None
    assert start_problem(utc(2200, 1, 1)) is not None
    assert "cannot be computed" in (runs_problem(utc(2020, 1, 1), UTCZ, "years", 10000, utc(2026, 1, 1)) or "")
