"""Running one transaction: claim it, keep a heartbeat, record the outcome. And recovering the ones whose
worker died (kill -9, power loss): they are marked failed with a reason, never left ``running``."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from vmbackup.db.base import utcnow
from vmbackup.db.models import Backup, BackupServer, Transaction
from vmbackup.db.queries import common
from vmbackup.db.queries import transactions as q
from vmbackup.errors import VmbackupError
from vmbackup.services import fleet, tasks

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
# A running transaction whose heartbeat is older than this belongs to a dead or hung worker.
STALL_SECONDS = 60.0

Sessions = sessionmaker[Session]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TxLog:
    """The transaction's ``log_output``: timestamped lines, flushed to the database by the heartbeat. Its owner
    reads it, so what a task marks secret (`hide`: image and storage paths, F13) never reaches it; the service
    log keeps the full failure message for the operator."""

    def __init__(self, existing: str = "") -> None:
        self.lines = [existing.rstrip("\n")] if existing else []
        self._lock = threading.Lock()
        self._hidden: dict[str, str] = {}

    def hide(self, secret: str, shown: str) -> None:
        if secret:
            with self._lock:
                self._hidden[secret] = shown

    def _redact(self, message: str) -> str:
        for secret in sorted(self._hidden, key=len, reverse=True):  # longest first: a path before its parent
            message = message.replace(secret, self._hidden[secret])
        return message

    def __call__(self, message: str) -> None:
        with self._lock:
            self.lines.append(f"[{utcnow().isoformat()}] {self._redact(message)}")

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines) + "\n"

    def secrets(self) -> dict[str, str]:
        """Placeholder -> the hidden text (the first hidden under it), for admins' view of the log."""
        with self._lock:
            out: dict[str, str] = {}
            for secret, shown in self._hidden.items():
                out.setdefault(shown, secret)
            return out


def _write(sessions: Sessions, tx_id: int, *, release: bool = False, **values: object) -> None:
    """Update the transaction; with ``release`` also give up its lock keys, in the same database transaction."""
    with sessions() as db:
        tx = db.get(Transaction, tx_id)
        if tx is not None:
            for key, value in values.items():
                setattr(tx, key, value)
        if release:
            q.release_locks(db, tx_id)
        db.commit()


def _finish(sessions: Sessions, tx_id: int, **values: object) -> None:
    """Record the outcome and give up the transaction's lock keys at once."""
    _write(sessions, tx_id, release=True, **values)


def _heartbeat(sessions: Sessions, tx_id: int, txlog: TxLog, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            _write(sessions, tx_id, heartbeat_at=utcnow(), log_output=txlog.text(), log_secrets=txlog.secrets())
        except Exception:  # a database blip must not kill the work; the next beat tries again
            log.warning("heartbeat of transaction %s failed", tx_id, exc_info=True)


def serves(queues: Collection[str] | None, queue: str) -> bool:
    """A worker serving ``queues`` (None: every queue) may run a transaction of ``queue``."""
    return queues is None or queue in queues


def execute(sessions: Sessions, tx_id: int, me: str | None = None, queues: Collection[str] | None = None) -> str | None:
    """Run transaction ``tx_id`` if it can be claimed now; returns its final status, or None if not claimed.

    ``queues``: those of the worker (None: every queue). A transaction of another queue is not claimed: its VM
    moved to a hypervisor this worker cannot reach (the job delivered before the move is stale)."""
    me = me or worker_id()
    with sessions() as db:
        tx = db.get(Transaction, tx_id)
        if tx is None or tx.status != "pending":
            return None
        if not serves(queues, tx.queue):
            log.info("transaction %s is for %s, not for worker %s", tx_id, tx.queue, me)
            return None
        if not q.claim(db, tx_id, list(tx.lock_keys), me, os.getpid(), utcnow(), queues):
            return None
        db.refresh(tx)
        db.expunge(tx)
    txlog = TxLog(tx.log_output)
    txlog(
        f"Started on host {socket.gethostname()} by worker {me} serving {fleet.serving(queues)} (attempt {tx.attempts})"
    )
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(sessions, tx_id, txlog, stop), daemon=True)
    beat.start()
    status = "failed"
    try:
        tasks.ACTIONS[tx.action](sessions, tx, txlog)
        status = "complete"
    except VmbackupError as exc:
        log.warning("transaction %s (%s) failed: %s", tx_id, tx.action, exc.message)
        txlog(f"Failed: {exc.message}")
    except Exception as exc:
        log.exception("transaction %s (%s) crashed", tx_id, tx.action)
        txlog(f"Failed: internal error: {exc!r}")
    finally:
        stop.set()
        beat.join()
    if status == "failed":
        try:
            tasks.fail(sessions, tx)
        except Exception:
            log.exception("could not release the locks of transaction %s", tx_id)
    _finish(
        sessions,
        tx_id,
        status=status,
        finished_at=utcnow(),
        heartbeat_at=utcnow(),
        log_output=txlog.text(),
        log_secrets=txlog.secrets(),
    )
    return status


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_dead(tx: Transaction, now: datetime, host: str) -> bool:
    owner_host, _, pid = (tx.worker or "").rpartition(":")
    if owner_host == host and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
        return True  # same machine, process gone: no need to wait for the heartbeat to age
    beat = tx.heartbeat_at or tx.started_at
    return beat is None or now - beat > timedelta(seconds=STALL_SECONDS)


def recover(
    sessions: Sessions, *, clean_storage: bool = False, backup_server_ids: Collection[int] | None = None
) -> list[int]:
    """Fail the running transactions whose worker is gone; returns their ids.

    With ``clean_storage`` (worker start-up, when nothing else runs) it also removes the temporary files a
    killed worker left in the storage of every backup server, or of ``backup_server_ids`` only (a dedicated
    worker: the other servers' storage may not even be mounted on its host)."""
    now, host = utcnow(), socket.gethostname()
    recovered = []
    with sessions() as db:
        stalled = [tx for tx in q.running(db) if _is_dead(tx, now, host)]
        for tx in stalled:
            db.expunge(tx)
    for tx in stalled:
        txlog = TxLog(tx.log_output)
        txlog(
            f"Failed: worker {tx.worker} stopped while this transaction was running "
            f"(last heartbeat {tx.heartbeat_at}); recovered by {worker_id()}"
        )
        tasks.fail(sessions, tx)
        _finish(sessions, tx.id, status="failed", finished_at=now, log_output=txlog.text())
        recovered.append(tx.id)
        log.warning("recovered transaction %s left running by %s", tx.id, tx.worker)
    with sessions() as db:
        if q.release_stray_locks(db):
            log.warning("released lock keys held for transactions that were not running")
        db.commit()
    if clean_storage:
        with sessions() as db:
            if not q.running(db):
                tasks.clean_scratch(sessions)
                for server in common.all_of(db, BackupServer):
                    if backup_server_ids is not None and server.id not in backup_server_ids:
                        continue
                    try:
                        tasks.engine_for(server).recover()
                    except Exception:
                        log.warning("cleaning storage of backup server %s failed", server.id, exc_info=True)
    return recovered


def pending(db: Session, limit: int = 50, queues: Collection[str] | None = None) -> list[Transaction]:
    """What is waiting to run in ``queues`` (None: all), in the order it should start (the polling worker's)."""
    return q.pending(db, limit, queues)


def busy_lock_keys(db: Session) -> set[str]:
    """Lock keys held now by running transactions (and by API changes being committed)."""
    return q.busy_lock_keys(db)


__all__ = ["Backup", "busy_lock_keys", "execute", "pending", "recover", "worker_id"]
