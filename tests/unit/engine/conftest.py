from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.images import MiB, flip_byte, overwrite, write_image  # noqa: F401  (re-exported to tests)
from vmbackup.engine import Engine
from vmbackup.storage import LocalStorage, MemoryStorage, Storage

ImageFactory = Callable[..., Path]


@pytest.fixture
def make_image(tmp_path: Path) -> ImageFactory:
    def make(name: str = "disk.img", size: int = 6 * MiB, seed: int = 0) -> Path:
        return write_image(tmp_path / name, size, seed)

    return make


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return LocalStorage(tmp_path / "store") if request.param == "local" else MemoryStorage()


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def engine(local: LocalStorage) -> Engine:
    # Small chunks keep the images small while still having many chunks per disk.
    return Engine(local, chunk_size=64 * 1024, workers=2)
