from __future__ import annotations

from pathlib import Path

import pytest

from vmbackup.errors import Invalid
from vmbackup.storage.local import LocalStorage
from vmbackup.storage.location import open_storage


@pytest.mark.parametrize("form", ["{p}", "file://{p}"])
def test_paths_and_file_urls_open_a_local_directory(tmp_path: Path, form: str) -> None:
    storage = open_storage(form.format(p=tmp_path / "store"))
    assert isinstance(storage, LocalStorage)
    storage.put("a/b", b"x")
    assert (tmp_path / "store" / "a" / "b").read_bytes() == b"x"


@pytest.mark.parametrize("location", ["relative/dir", "s3://bucket/prefix", "file://host/path", ""])
def test_other_locations_are_refused(location: str) -> None:
    with pytest.raises(Invalid):
        open_storage(location)
