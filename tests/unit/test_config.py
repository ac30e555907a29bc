"""config.py: settings come from the mapping load_settings reads (the process environment by default), only."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmbackup.config import SettingsError, load_settings


@pytest.mark.parametrize("value", ["/srv/images,/dev/vg0", "/srv/images:/dev/vg0", " /srv/images , /dev/vg0 "])
def test_image_roots_from_the_process_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.setenv("VMBACKUP_IMAGE_ROOTS", value)
    monkeypatch.setenv("VMBACKUP_DATA_DIR", str(tmp_path))
    assert load_settings().image_roots == (Path("/srv/images"), Path("/dev/vg0"))


def test_a_bad_image_root_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMBACKUP_IMAGE_ROOTS", "relative/dir")
    with pytest.raises(SettingsError, match="VMBACKUP_IMAGE_ROOTS"):
        load_settings()


def test_a_given_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The process environment must not leak into settings built from a mapping (tests build many).
    monkeypatch.setenv("VMBACKUP_LISTEN", "10.0.0.1:1")
    monkeypatch.setenv("VMBACKUP_IMAGE_ROOTS", "/srv/a")
    settings = load_settings({"VMBACKUP_DATA_DIR": str(tmp_path)})
    assert settings.listen == "127.0.0.1:8080"
    assert settings.image_roots == ()
