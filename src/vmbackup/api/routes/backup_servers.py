from __future__ import annotations

from fastapi import APIRouter

from vmbackup.api import presenters
from vmbackup.api.routes._crud import add_crud_routes
from vmbackup.api.schemas import BackupServerCreate, BackupServerUpdate
from vmbackup.db.models import BackupServer

router = APIRouter(prefix="/settings/backup_servers", tags=["backup servers"])
add_crud_routes(router, "backup_server", BackupServer, presenters.backup_server, BackupServerCreate, BackupServerUpdate)
