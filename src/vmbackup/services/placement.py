"""Where a new backup goes: OnApp 6.4's rules for choosing a backup server (reference section 10).

1. The candidates are the backup servers joined (``BackupServerJoin``) to the VM's hypervisor or to that
   hypervisor's zone. A VM with no hypervisor (the single-host setup, and data from before hypervisors existed)
   may go to any backup server, as it always could.
2. Keep those enabled, and those with room: the kB their backups use is below their capacity (GB; 0 = no limit).
3. Pick the one with the fewest take transactions queued on it, then the most idle (``cpu_idle`` from its live
   workers' heartbeats; unknown counts as the least idle), then the lowest id.

With none left, OnApp's own 422 message, which its clients show as is.

Queued, not only running (OnApp says running): vmbackup chooses the server when the take is *queued*, while OnApp
chooses when it runs. A burst of takes queued in one second sees no running take at all, so counting running ones
alone would send the whole burst to the same server; counting pending ones as well spreads it, one each in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from vmbackup.db.models import BackupServer, VirtualMachine
from vmbackup.db.queries import placement as q
from vmbackup.errors import Conflict
from vmbackup.services import fleet
from vmbackup.services.space import KB_PER_GB

NONE_ELIGIBLE = "Backup cannot be made at this time: This disk cannot be backed up, check Location Group settings."


def backup_server(db: Session, vm: VirtualMachine) -> BackupServer:
    """The backup server a new backup of ``vm`` (one of its disks, or all of them) is stored on."""
    hypervisor = vm.hypervisor
    found = q.candidates(
        db,
        hypervisor_id=hypervisor.id if hypervisor is not None else None,
        zone_id=hypervisor.hypervisor_group_id if hypervisor is not None else None,
    )
    roomy = [c for c in found if not c.server.capacity or c.used_kb < c.server.capacity * KB_PER_GB]
    if not roomy:
        raise Conflict(NONE_ELIGIBLE)
    idle = cpu_idle(db)

    def rank(c: q.Candidate) -> tuple[int, int, int]:
        # Unknown idleness ranks below 0, the least idle measured: a server whose load is unknown is not preferred.
        known = idle.of(c.server.id)
        return c.takes, -(known if known is not None else -1), c.server.id

    best = min(roomy, key=rank)
    return best.server


@dataclass(frozen=True)
class Idleness:
    """Backup servers' ``cpu_idle`` (0..100) as their live workers last reported it.

    The workers started for a server (``vmbackup worker --backup-server ID``) run on its host, so theirs is its
    figure; a server with none of its own is served by the workers that run everything and takes theirs. Of
    several, the most idle: that one picks the next job up first. None: no live worker measured it."""

    own: dict[int, int]
    anywhere: int | None

    def of(self, server_id: int) -> int | None:
        return self.own.get(server_id, self.anywhere)


def cpu_idle(db: Session) -> Idleness:
    own: dict[int, int] = {}
    anywhere: int | None = None
    for w in fleet.live_workers(db):
        if w.cpu_idle is None:
            continue
        if not w.hypervisor_ids and not w.backup_server_ids:
            anywhere = max(anywhere or 0, w.cpu_idle)
        for server_id in w.backup_server_ids:
            own[server_id] = max(own.get(server_id, 0), w.cpu_idle)
    return Idleness(own, anywhere)
