from __future__ import annotations

from fastapi import APIRouter

from vmbackup.api import presenters
from vmbackup.api.routes._crud import add_crud_routes, each
from vmbackup.api.schemas import DataStoreCreate, DataStoreUpdate
from vmbackup.db.models import DataStore

router = APIRouter(prefix="/settings/data_stores", tags=["data stores"])
add_crud_routes(router, "data_store", DataStore, each(presenters.data_store), DataStoreCreate, DataStoreUpdate)
