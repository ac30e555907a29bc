"""Calendar arithmetic for schedules: the k-th run of "every N days/weeks/months/years" from an anchor time.

Runs are counted from the schedule's anchor in the owner's time zone, never from the previous run, so month-end
clamping does not drift (Jan 31 -> Feb 28 -> Mar 31, not Mar 28) and a daily 02:00 run stays at 02:00 local time
across daylight-saving changes.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, tzinfo

PERIODS = ("days", "weeks", "months", "years", "minutes")  # minutes: trials and tests only

# Schedules are refused (422) unless their runs stay well inside the years datetime can hold (1 to 9999): a start
# between these two instants, and one step of at most about ten years (MAX_DURATION). Any owner's time-zone
# offset and any run the scheduler will compute for centuries then stays computable. A backup every ten years,
# or a start before 1970 or after 2200, serves no backup plan.
EARLIEST_START = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_START = datetime(2200, 1, 1, tzinfo=UTC)
MAX_DURATION = {"minutes": 10 * 366 * 24 * 60, "days": 3660, "weeks": 522, "months": 120, "years": 10}


def _add_months(local: datetime, months: int) -> datetime:
    total = local.year * 12 + (local.month - 1) + months
    year, month = divmod(total, 12)
    month += 1
    day = min(local.day, calendar.monthrange(year, month)[1])  # Jan 31 + 1 month = Feb 28 (or 29)
    return local.replace(year=year, month=month, day=day)


def occurrence(anchor: datetime, tz: tzinfo, period: str, duration: int, k: int) -> datetime:
    """The k-th run (k=0 is the anchor itself), as an aware UTC datetime."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}")
    local = anchor.astimezone(tz).replace(tzinfo=None)  # wall-clock time in the owner's zone
    step = k * duration
    if period == "minutes":
        return (anchor + timedelta(minutes=step)).astimezone(UTC)
    if period == "days":
        wall = local + timedelta(days=step)
    elif period == "weeks":
        wall = local + timedelta(weeks=step)
    elif period == "months":
        wall = _add_months(local, step)
    else:
        wall = _add_months(local, 12 * step)
    return wall.replace(tzinfo=tz).astimezone(UTC)


def _approx_index(anchor: datetime, period: str, duration: int, after: datetime) -> int:
    seconds = {"minutes": 60, "days": 86400, "weeks": 7 * 86400, "months": 28 * 86400, "years": 365 * 86400}[period]
    return max(0, int((after - anchor).total_seconds() // (seconds * duration)) - 2)


def next_after(anchor: datetime, tz: tzinfo, period: str, duration: int, after: datetime) -> datetime:
    """The first run strictly later than ``after``."""
    return occurrence(anchor, tz, period, duration, index_after(anchor, tz, period, duration, after))


def index_after(anchor: datetime, tz: tzinfo, period: str, duration: int, after: datetime) -> int:
    """k of the first run strictly later than ``after``."""
    if duration < 1:
        raise ValueError("duration must be at least 1")
    k = _approx_index(anchor, period, duration, after)
    while occurrence(anchor, tz, period, duration, k) <= after:
        k += 1
    # _approx_index may overshoot for long months; step back while the previous run is still later than `after`
    while k > 0 and occurrence(anchor, tz, period, duration, k - 1) > after:
        k -= 1
    return k


def duration_problem(period: str, duration: int) -> str | None:
    """Why ``duration`` cannot go with ``period``, or None."""
    limit = MAX_DURATION.get(period)
    if limit is None:
        return None  # an unknown period is its own error
    if not 1 <= duration <= limit:
        return f"must be between 1 and {limit} for period {period}"
    return None


def start_problem(start: datetime) -> str | None:
    """Why a schedule may not start (or be anchored) at ``start``, or None."""
    if not EARLIEST_START <= start < LATEST_START:
        return f"must be from {EARLIEST_START.date()} to before {LATEST_START.date()} (UTC)"
    return None


def runs_problem(anchor: datetime, tz: tzinfo, period: str, duration: int, now: datetime) -> str | None:
    """Why the next runs of a schedule cannot be computed, or None: the check the scheduler relies on."""
    try:
        nxt = next_after(anchor, tz, period, duration, now)
        next_after(anchor, tz, period, duration, nxt)
    except (ValueError, OverflowError) as exc:
        return f"gives runs that cannot be computed ({exc})"
    return None
