"""Where backup bytes live: a small key -> bytes contract and its backends."""

from vmbackup.storage.base import ObjectMissing, Storage
from vmbackup.storage.local import LocalStorage
from vmbackup.storage.memory import MemoryStorage

__all__ = ["LocalStorage", "MemoryStorage", "ObjectMissing", "Storage"]
