"""The real `python -m vmbackup.cli.store` process against a storage directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmbackup.errors import BackupDamaged, BackupMissing, SourceMissing


def run(*args: str, store: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VMBACKUP_STORE_DIR": str(store)}
    proc = subprocess.run(
        [sys.executable, "-m", "vmbackup.cli.store", *args], env=env, capture_output=True, text=True, timeout=60
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(3 << 20)
        f.write(os.urandom(50_000))
        f.seek(2 << 20)
        f.write(b"hello" * 10_000)
    return img


def test_take_list_verify_restore_delete_normal(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "store"
    out = json.loads(run("take", str(image), "--json", store=store).stdout)
    bid = out["backup_id"]
    assert len(bid) == 14 and out["kind"] == "normal" and out["logical_bytes"] == 3 << 20
    listed = json.loads(run("list", "--json", store=store).stdout)
    assert [b["backup_id"] for b in listed] == [bid]
    assert json.loads(run("verify", bid, "--json", store=store).stdout)["ok"] is True
    run("restore", bid, str(tmp_path / "r.img"), store=store)
    assert (tmp_path / "r.img").read_bytes() == image.read_bytes()
    run("delete", bid, "--dir", str(store), store=tmp_path / "ignored")
    assert run("list", store=store).stdout == ""


def test_incremental_with_disks(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "store"
    run("take", "--incremental", "--id", "abcdefghij0123", "--disk", f"vda={image}", store=store)
    run("restore", "abcdefghij0123", "--disk", f"vda={tmp_path / 'r.img'}", store=store)
    assert (tmp_path / "r.img").read_bytes() == image.read_bytes()
    assert "incremental" in run("list", store=store).stdout


def test_domain_errors_exit_with_their_code(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "store"
    proc = run("take", str(tmp_path / "missing.img"), store=store, ok=False)
    assert proc.returncode == SourceMissing.exit_code and "does not exist" in proc.stderr
    proc = run("verify", "nosuchbackup00", store=store, ok=False)
    assert proc.returncode == BackupMissing.exit_code and "nosuchbackup00" in proc.stderr
    run("take", str(image), "--id", "damaged0000000", store=store)
    archive = store / "normal" / "damaged0000000.tar.zst"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    archive.write_bytes(bytes(data))
    proc = run("verify", "damaged0000000", store=store, ok=False)
    assert proc.returncode == BackupDamaged.exit_code and "DAMAGED" in proc.stdout
    proc = run("restore", "damaged0000000", str(tmp_path / "x.img"), store=store, ok=False)
    assert proc.returncode == BackupDamaged.exit_code and "backup damaged0000000" in proc.stderr


@pytest.mark.parametrize(
    "args", [("list",), ("verify", "abcdefghij0123"), ("delete", "abcdefghij0123"), ("restore", "abcdefghij0123", "t")]
)
def test_a_missing_store_directory_is_refused_not_created(tmp_path: Path, args: tuple[str, ...]) -> None:
    typo = tmp_path / "stroe"
    proc = run(*args, store=typo, ok=False)
    assert proc.returncode == 2, proc.stderr
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not typo.exists()


def test_take_creates_its_store_directory(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "new" / "store"
    run("take", str(image), store=store)
    assert len(json.loads(run("list", "--json", store=store).stdout)) == 1


def test_a_disk_given_twice_is_refused(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "store"
    other = tmp_path / "other.img"
    other.write_bytes(image.read_bytes()[: 1 << 20])
    proc = run("take", "--disk", f"vda={image}", "--disk", f"vda={other}", store=store, ok=False)
    assert proc.returncode == 2 and "'vda' is given more than once" in proc.stderr
    proc = run("take", str(image), "--disk", f"disk0={other}", store=store, ok=False)
    assert proc.returncode == 2 and "'disk0'" in proc.stderr
    assert not store.exists() or run("list", store=store).stdout == ""  # nothing was taken
    run("take", "--id", "abcdefghij0123", "--disk", f"vda={image}", "--disk", f"vdb={other}", store=store)
    r1, r2 = tmp_path / "r1.img", tmp_path / "r2.img"
    proc = run("restore", "abcdefghij0123", "--disk", f"vda={r1}", "--disk", f"vda={r2}", store=store, ok=False)
    assert proc.returncode == 2 and "'vda' is given more than once" in proc.stderr
    proc = run(
        "restore", "abcdefghij0123", "--disk", f"vda={r1}", "--disk", f"vdb={tmp_path}/./r1.img", store=store, ok=False
    )
    assert proc.returncode == 2 and "more than one disk" in proc.stderr
    assert not r1.exists() and not r2.exists()
    run("restore", "abcdefghij0123", "--disk", f"vda={r1}", "--disk", f"vdb={r2}", store=store)
    assert r1.read_bytes() == image.read_bytes() and r2.read_bytes() == other.read_bytes()
