"""Auto-backup schedules and presets, and the switches that turn auto-backups on and off for a disk or a VM.

Normal backups are scheduled per disk, incremental backups per VM (OnApp's model). Enabling a target with no
schedule applies the enabled presets; enabling one that has schedules keeps them and turns them back on.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vmbackup.db.base import utcnow
from vmbackup.db.models import AutobackupPreset, Disk, Schedule, ScheduleLog, User, VirtualMachine
from vmbackup.db.queries import schedules as q
from vmbackup.errors import Invalid
from vmbackup.services import periods
from vmbackup.services.access import apply, find_owned, owner_scope
from vmbackup.services.machines import get_disk, get_vm

TARGETS = ("Disk", "VirtualMachine")
# Shipped defaults, created on first start: daily kept a week and weekly kept a month are on; monthly and
# yearly exist for the admin to switch on.
DEFAULT_PRESETS = (("days", 1, 7, True), ("weeks", 1, 4, True), ("months", 1, 12, False), ("years", 1, 2, False))


def target_owner(db: Session, actor: User, target_type: str, target_id: int) -> int:
    """The owner of a schedule target the actor may see (404 otherwise)."""
    if target_type == "Disk":
        return get_disk(db, actor, target_id).virtual_machine.user_id
    if target_type == "VirtualMachine":
        return get_vm(db, actor, target_id).user_id
    raise Invalid(fields={"target_type": [f"must be one of {', '.join(TARGETS)}"]})


# -- presets ---------------------------------------------------------------------------------------------


def seed_presets(db: Session) -> None:
    if not db.scalar(select(func.count()).select_from(AutobackupPreset)):
        for period, duration, rotation, enabled in DEFAULT_PRESETS:
            db.add(AutobackupPreset(period=period, duration=duration, rotation_period=rotation, enabled=enabled))
        db.commit()


# -- schedules -------------------------------------------------------------------------------------------


def list_schedules(
    db: Session, actor: User, target_type: str | None = None, target_id: int | None = None
) -> list[Schedule]:
    if target_type is not None and target_id is not None:
        target_owner(db, actor, target_type, target_id)
        return q.for_target(db, target_type, target_id)
    return q.for_user(db, owner_scope(actor))


def get_schedule(db: Session, actor: User, schedule_id: int) -> Schedule:
    return find_owned(db, actor, Schedule, schedule_id, "Schedule")


def owner_zone(owner: User | None) -> tzinfo:
    """The zone a schedule's runs are counted in: its owner's."""
    return ZoneInfo(owner.time_zone if owner else "UTC")


def _check(db: Session, owner_id: int, values: dict[str, Any], allowed_periods: tuple[str, ...]) -> None:
    """Refuse a schedule the scheduler could not run: every next run must be computable (F4), so that one
    schedule can never make a scheduler pass fail."""
    period, duration, anchor = values["period"], values["duration"], values["anchor_at"]
    if period not in allowed_periods:
        raise Invalid(fields={"period": [f"must be one of {', '.join(allowed_periods)}"]})
    problem = periods.duration_problem(period, duration)
    if problem:
        raise Invalid(fields={"duration": [problem]})
    problem = periods.start_problem(anchor) or periods.runs_problem(
        anchor, owner_zone(db.get(User, owner_id)), period, duration, utcnow()
    )
    if problem:
        raise Invalid(fields={"start_at": [problem]})


def create_schedule(db: Session, actor: User, data: dict[str, Any], allowed_periods: tuple[str, ...]) -> Schedule:
    if data.get("target_id") is None:
        raise Invalid(fields={"target_id": ["can't be blank"]})
    owner = target_owner(db, actor, data["target_type"], data["target_id"])
    start = data.pop("start_at", None) or utcnow()
    values = {"period": "days", "duration": 1, **data, "anchor_at": start, "start_at": start}
    _check(db, owner, values, allowed_periods)
    schedule = Schedule(user_id=owner, **values)
    db.add(schedule)
    flag_disks(db, schedule.target_type, schedule.target_id)
    db.commit()
    return schedule


def update_schedule(
    db: Session, actor: User, schedule_id: int, data: dict[str, Any], allowed_periods: tuple[str, ...]
) -> None:
    schedule = get_schedule(db, actor, schedule_id)
    if "start_at" in data:  # a new start re-anchors the series
        data["anchor_at"] = data["start_at"] = data["start_at"] or utcnow()
    elif {"period", "duration"} & data.keys():
        data["anchor_at"] = schedule.start_at  # keep the next run, count the new period from it
    if {"period", "duration", "anchor_at"} & data.keys():  # other changes (disabling a bad row) are always allowed
        current = {"period": schedule.period, "duration": schedule.duration, "anchor_at": schedule.anchor_at}
        _check(db, schedule.user_id, {**current, **data}, allowed_periods)
    apply(schedule, data)
    flag_disks(db, schedule.target_type, schedule.target_id)
    db.commit()


def delete_schedule(db: Session, actor: User, schedule_id: int) -> None:
    schedule = get_schedule(db, actor, schedule_id)
    db.delete(schedule)
    flag_disks(db, schedule.target_type, schedule.target_id)
    db.commit()


def schedule_logs(db: Session, actor: User, schedule_id: int) -> list[ScheduleLog]:
    get_schedule(db, actor, schedule_id)
    return q.logs(db, schedule_id)


def set_autobackups(db: Session, actor: User, target_type: str, target_id: int, enabled: bool) -> list[Schedule]:
    owner = target_owner(db, actor, target_type, target_id)
    schedules = q.for_target(db, target_type, target_id)
    if enabled and not schedules:
        now = utcnow()
        presets = db.scalars(select(AutobackupPreset).where(AutobackupPreset.enabled.is_(True))).all()
        schedules = [
            Schedule(
                target_type=target_type,
                target_id=target_id,
                user_id=owner,
                period=p.period,
                duration=p.duration,
                rotation_period=p.rotation_period,
                anchor_at=now,
                start_at=now,
            )
            for p in presets
        ]
        db.add_all(schedules)
    else:
        for schedule in schedules:
            schedule.status = "enabled" if enabled else "disabled"
    flag_disks(db, target_type, target_id)
    db.commit()
    return schedules


def flag_disks(db: Session, target_type: str, target_id: int) -> None:
    """A disk ``has_autobackups`` while an enabled schedule covers it, on the disk itself or on its VM."""
    db.flush()
    if target_type == "Disk":
        disk = db.get(Disk, target_id)
        disks = [disk] if disk else []
    else:
        vm = db.get(VirtualMachine, target_id)
        disks = list(vm.disks) if vm else []
    for disk in disks:
        disk.has_autobackups = q.enabled_for(db, "Disk", disk.id) or q.enabled_for(
            db, "VirtualMachine", disk.virtual_machine_id
        )
