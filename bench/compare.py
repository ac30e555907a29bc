"""vmbackup beside tar|zstd, restic and borg on one generated disk image, in one run.

    make bench                                   (2 GiB image, each timed step run twice, the faster kept)
    .venv/bin/python bench/compare.py [--size 2G] [--repeat 2] [--work DIR] [--cache cold|warm] [--keep]
    .venv/bin/python bench/compare.py --size 256M --repeat 1     (quick smoke run)

Steps: machine limits (read, zstd, BLAKE3, SHA-256, write) -> normal backup vs `tar -S | zstd -T0 -3` -> first
backups (vmbackup incremental, restic, borg) -> restores of the original -> 2% of the 4 KiB blocks rewritten in
scattered clusters -> second backups -> restores of the changed image.  Every restored image is checked against
the SHA-256 of its source.  Each timed step is a child process: wall time (including a `sync -f` of the work
file system, since vmbackup fsyncs and the others do not all do), user+system CPU and peak RSS from wait4().
A pipeline's peak RSS is that of its largest process.  Results: bench/out/results.json and results.md.

Needs root for `apt-get install restic borgbackup` (skipped when installed) and for dropping the page cache
(falls back to warm-cache runs, reading each step's input once before timing it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import mmap
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

MiB = 1 << 20
BLOCK = 4096
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
VMBACKUP = str(VENV_BIN / "vmbackup")
CHUNK = 1 << 20  # the old 1 MiB chunk size: the change is reported in 1 MiB chunks touched (comparable across runs)


# -- helpers ----------------------------------------------------------------------------------------------


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", s.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    n = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    if n % MiB or n < 16 * MiB:
        raise argparse.ArgumentTypeError("size must be a multiple of 1 MiB, at least 16 MiB")
    return n


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def du(path: Path) -> int:
    """Bytes of all files under path (apparent sizes, like `du -sb`)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def sh(cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], check=True, text=True, capture_output=True, **kw)


def version(cmd: str) -> str:
    try:
        return sh(cmd).stdout.strip().splitlines()[0]
    except (subprocess.CalledProcessError, FileNotFoundError, IndexError):
        return "?"


def ensure_tools() -> None:
    missing = [t for t in ("restic", "borg", "zstd") if not shutil.which(t)]
    if not Path("/usr/bin/time").exists():
        missing.append("time")
    if not missing:
        return
    pkgs = ["restic", "borgbackup", "time", "zstd"]
    log(f"installing {' '.join(pkgs)} (missing: {' '.join(missing)})")
    r = subprocess.run(["apt-get", "install", "-y", *pkgs], capture_output=True)
    if r.returncode:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", *pkgs], check=True, capture_output=True)


class Cache:
    """Cold cache (drop_caches) when allowed, else warm: the step's inputs are read once before timing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        if mode == "cold" and not self._drop():
            log("cannot drop the page cache: running warm-cache")
            self.mode = "warm"

    @staticmethod
    def _drop() -> bool:
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False

    def prepare(self, inputs: list[Path]) -> None:
        os.sync()
        if self.mode == "cold":
            self._drop()
            return
        for p in inputs:
            for f in [p] if p.is_file() else [Path(d, n) for d, _, ns in os.walk(p) for n in ns]:
                with open(f, "rb") as fh:
                    while fh.read(8 * MiB):
                        pass


# -- the image --------------------------------------------------------------------------------------------


def _text_pool(rng: random.Random) -> list[bytes]:
    """Log-like lines: a small vocabulary with numbers and hex ids, ~3x compressible by zstd -3."""
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(2000)]
    hosts = [f"node{i:02d}" for i in range(40)]
    lines = []
    for _ in range(50000):
        lines.append(
            (
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {rng.choice(hosts)} "
                f"{rng.choice(words)}[{rng.randint(100, 99999)}]: {' '.join(rng.choices(words, k=rng.randint(3, 9)))}"
                f" id={rng.getrandbits(32):08x} n={rng.randint(0, 10**6)}\n"
            ).encode()
        )
    return lines


def _text(rng: random.Random, pool: list[bytes], n: int) -> bytes:
    out = b"".join(rng.choices(pool, k=n // 60 + 100))
    while len(out) < n:
        out += b"".join(rng.choices(pool, k=n // 60 + 100))
    return out[:n]


def _random(tag: str, n: int) -> bytes:
    return blake3.blake3(tag.encode()).digest(length=n)  # deterministic, incompressible, fast


KINDS = ["hole", "zeros", "random", "text", "repeat"]
WEIGHTS = [0.34, 0.06, 0.25, 0.25, 0.10]


def make_image(path: Path, data_path: Path, size: int, seed: int) -> dict[str, Any]:
    """Segments of 1-32 MiB of each kind: holes (never written), written zeros, random, log-like text, and
    copies of one 1 MiB block (half the repeat segments 1 MiB-aligned, half shifted by a multiple of 4 KiB).
    data_path receives the non-zero bytes back to back (for the machine-limit measurements)."""
    rng = random.Random(seed)
    pool = _text_pool(rng)
    repeated = _text(rng, pool, MiB // 2) + _random("repeat-block", MiB // 2)
    layout = {k: 0 for k in KINDS}
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    with open(data_path, "wb") as data:
        os.ftruncate(fd, size)
        mib = size // MiB
        pos = seg = 0
        while pos < mib:
            n = min(rng.randint(1, 32), mib - pos)
            kind = rng.choices(KINDS, WEIGHTS)[0]
            off = pos * MiB
            if kind == "zeros":
                os.pwrite(fd, bytes(n * MiB), off)
            elif kind == "random":
                buf = _random(f"seg{seg}", n * MiB)
                os.pwrite(fd, buf, off)
                data.write(buf)
            elif kind == "text":
                buf = _text(rng, pool, n * MiB)
                os.pwrite(fd, buf, off)
                data.write(buf)
            elif kind == "repeat":
                shift = rng.randrange(1, 256) * BLOCK if (n > 1 and rng.random() < 0.5) else 0
                copies = n - 1 if shift else n
                for c in range(copies):
                    os.pwrite(fd, repeated, off + shift + c * MiB)
                    data.write(repeated)
            layout[kind] += n * MiB
            pos += n
            seg += 1
    os.fsync(fd)
    os.close(fd)
    layout["data_bytes"] = data_path.stat().st_size
    return layout


def change_image(path: Path, size: int, fraction: float, seed: int) -> dict[str, Any]:
    """Rewrite `fraction` of the 4 KiB blocks in place, in clusters of 1-16 consecutive blocks at random
    places (half random data, half log-like text).  Returns the counts, and how many 1 MiB chunks changed."""
    rng = random.Random(seed)
    pool = _text_pool(random.Random(seed + 1))
    nblocks = size // BLOCK
    target = round(nblocks * fraction)
    dirty = bytearray(nblocks)
    changed = clusters = 0
    fd = os.open(path, os.O_RDWR)
    try:
        while changed < target:
            n = min(rng.randint(1, 16), target - changed)
            start = rng.randrange(0, nblocks - n + 1)
            buf = _random(f"chg{clusters}", n * BLOCK) if rng.random() < 0.5 else _text(rng, pool, n * BLOCK)
            os.pwrite(fd, buf, start * BLOCK)
            for b in range(start, start + n):
                if not dirty[b]:
                    dirty[b] = 1
                    changed += 1
            clusters += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    per_chunk = CHUNK // BLOCK
    chunks = sum(1 for c in range(0, nblocks, per_chunk) if any(dirty[c : c + per_chunk]))
    return {
        "blocks_changed": changed,
        "bytes_changed": changed * BLOCK,
        "clusters": clusters,
        "chunks_1mib_touched": chunks,
        "chunks_1mib_total": -(-size // CHUNK),
    }


# -- timing -----------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, work: Path, cache: Cache, repeat: int, env: dict[str, str]) -> None:
        self.work, self.cache, self.repeat, self.env = work, cache, repeat, env
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n = 0

    def once(self, name: str, argv: list[str], inputs: list[Path], cwd: Path | None = None) -> dict[str, Any]:
        self.cache.prepare(inputs)
        self.n += 1
        out_path, err_path = self.logs / f"{self.n:03d}.out", self.logs / f"{self.n:03d}.err"
        rss_path = self.logs / f"{self.n:03d}.rss"
        # Peak RSS through /usr/bin/time: wait4() on a child forked from this (large) process would report
        # our own RSS, which the child inherits until it execs.
        argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_path), *argv]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=self.env)
            _, status, ru = os.wait4(p.pid, 0)
            t1 = time.perf_counter()
            p.returncode = os.waitstatus_to_exitcode(status)
            subprocess.run(["sync", "-f", str(self.work)], check=True)
            t2 = time.perf_counter()
        stdout = out_path.read_text(errors="replace")
        if p.returncode:
            raise RuntimeError(f"{name}: {argv} exited {p.returncode}:\n{err_path.read_text(errors='replace')[-3000:]}")
        return {
            "wall_s": t2 - t0,
            "cmd_s": t1 - t0,
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime,
            "maxrss_mib": int(rss_path.read_text().split()[-1]) / 1024,
            "stdout": stdout[-4000:],
        }

    def rounds(self, group: list[Step]) -> dict[str, dict[str, Any]]:
        """Run the steps of a group in turn, `repeat` rounds (so the machine's noise hits them alike), calling
        a step's reset() before each of its runs but the first; keep each step's fastest run."""
        runs: dict[str, list[dict[str, Any]]] = {st.key: [] for st in group}
        for i in range(self.repeat):
            for st in group:
                if i and st.reset:
                    st.reset()
                run = self.once(st.name, st.argv, st.inputs, st.cwd)
                runs[st.key].append(run)
                log(f"  {st.name}: {run['wall_s']:.2f}s wall, {run['cpu_s']:.2f}s cpu, {run['maxrss_mib']:.0f} MiB")
        out = {}
        for st in group:
            best = dict(min(runs[st.key], key=lambda r: r["wall_s"]))
            best["runs_wall_s"] = [round(r["wall_s"], 3) for r in runs[st.key]]
            best["name"] = st.name
            out[st.key] = best
        return out

    def best(
        self, name: str, argv: list[str], inputs: list[Path], reset: Any = None, cwd: Path | None = None
    ) -> dict[str, Any]:
        return self.rounds([Step(name, name, argv, inputs, reset=reset, cwd=cwd)])[name]


@dataclass
class Step:
    key: str
    name: str
    argv: list[str]
    inputs: list[Path]
    reset: Any = None
    cwd: Path | None = None
    out: Path = Path()  # restores: the restored image and its expected SHA-256
    want: str = ""


def fresh(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def snapshot(src: Path, dst: Path) -> None:
    fresh(dst)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)


def prefault(gib: int) -> float:
    """Write one byte per page of `gib` GiB in a child process.  In a microVM the first touch of guest RAM
    faults into the host (measured ~2.7 s/GiB here, then ~0.6 s/GiB), which would otherwise land on whichever
    step first grows the page cache."""
    with open("/proc/meminfo") as f:
        avail = int(next(ln for ln in f if ln.startswith("MemAvailable")).split()[1]) << 10
    n = min(gib << 30, int(avail * 0.7)) // 4096 * 4096
    code = "import sys; n = int(sys.argv[1]); b = bytearray(n); b[::4096] = b'\\x01' * (n // 4096)"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(n)], check=True)
    return time.perf_counter() - t


# -- machine limits ---------------------------------------------------------------------------------------


def machine_limits(r: Runner, img: Path, data: Path, size: int, data_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    repeat, r.repeat = r.repeat, max(3, r.repeat)
    tmp = r.work / "limits"
    tmp.mkdir(exist_ok=True)

    def rate(res: dict[str, Any], nbytes: int) -> float:
        return nbytes / res["cmd_s"] / 1e6

    cold = Cache("cold") if r.cache.mode == "cold" else r.cache
    saved = r.cache
    r.cache = cold
    res = r.best("cat img (cold)", ["bash", "-c", f"cat {img} > /dev/null"], [])
    out["cat_img_cold_MBps"] = rate(res, size)
    res = r.best("cat data (cold)", ["bash", "-c", f"cat {data} > /dev/null"], [])
    out["read_data_cold_MBps"] = rate(res, data_bytes)
    r.cache = Cache("warm")
    res = r.best("cat img (warm)", ["bash", "-c", f"cat {img} > /dev/null"], [img])
    out["cat_img_warm_MBps"] = rate(res, size)
    res = r.best("zstd -1 -T1 img", ["bash", "-c", f"zstd -q -1 -T1 -c {img} > /dev/null"], [img])
    out["zstd1_T1_img_MBps"] = rate(res, size)
    res = r.best("zstd -1 -T1 data", ["bash", "-c", f"zstd -q -1 -T1 -c {data} > /dev/null"], [data])
    out["zstd1_T1_data_MBps"] = rate(res, data_bytes)
    res = r.best("zstd -3 -T1 data", ["bash", "-c", f"zstd -q -3 -T1 -c {data} > {tmp}/data.zst"], [data])
    out["zstd3_T1_data_MBps"] = rate(res, data_bytes)
    out["zstd3_ratio_data"] = data_bytes / (tmp / "data.zst").stat().st_size
    # vmbackup's normal archives use these parameters (engine/archive.py `_PARAMS`), in 4 MiB frames
    res = r.best(
        "zstd -2 wlog=22,hlog=17 -T1 data",
        ["bash", "-c", f"zstd -q -2 --zstd=wlog=22,hlog=17 -T1 -c {data} > /dev/null"],
        [data],
    )
    out["zstd_archive_T1_data_MBps"] = rate(res, data_bytes)
    res = r.best("zstd -d data", ["bash", "-c", f"zstd -q -d -c {tmp}/data.zst > /dev/null"], [tmp / "data.zst"])
    out["unzstd_data_MBps"] = rate(res, data_bytes)
    res = r.best(
        "write+fsync data",
        ["dd", f"if={data}", f"of={tmp}/w.bin", "bs=1M", "conv=fsync", "status=none"],
        [data],
        reset=lambda: fresh(tmp / "w.bin"),
    )
    out["write_fsync_MBps"] = data_bytes / res["wall_s"] / 1e6
    r.cache = saved
    fresh(tmp / "w.bin")
    with open(data, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        mv = memoryview(m)
        for _ in range(2):  # warm the mapping
            hashlib.md5(mv[: min(len(mv), 64 * MiB)]).digest()
        for label, make in (("blake3_1core_MBps", blake3.blake3), ("sha256_1core_MBps", hashlib.sha256)):
            best = min(_timed(make, mv) for _ in range(r.repeat))
            out[label] = data_bytes / best / 1e6
        mv.release()
    b3sum = shutil.which("b3sum")
    if b3sum:
        res = r.best("b3sum --num-threads 1", [b3sum, "--num-threads", "1", str(data)], [data])
        out["b3sum_1core_MBps"] = rate(res, data_bytes)
    res = r.best("sha256sum data", ["sha256sum", str(data)], [data])
    out["sha256sum_1core_MBps"] = rate(res, data_bytes)
    r.cache = Cache("warm")
    out["cli_start_s"] = r.best("vmbackup store --help", [VMBACKUP, "store", "--help"], [])["cmd_s"]
    r.cache = saved
    fresh(tmp)
    r.repeat = repeat
    return out


def _timed(make: Any, data: memoryview) -> float:
    """One core: python blake3 is single-threaded unless asked otherwise, hashlib always is."""
    t = time.perf_counter()
    make(data).digest()
    return time.perf_counter() - t


# -- the run ----------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "restic": version("restic version"),
        "borg": version("borg --version"),
        "tar": version("tar --version"),
        "zstd": version("zstd --version"),
        "vmbackup_commit": version(f"git -C {HERE.parent} rev-parse --short HEAD"),
        "vmbackup_dirty": bool(version(f"git -C {HERE.parent} status --porcelain -- src | head -1") not in ("?", "")),
        # The code the CLI steps run: another tree on PYTHONPATH (e.g. `git archive <commit> src`) wins over this one
        "vmbackup_src": str(
            Path(sh(f"{VENV_BIN / 'python'} -c 'import vmbackup; print(vmbackup.__file__)'").stdout.strip()).parent
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("2G"), help="image size (default 2G)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per timed step, the fastest is kept (default 2)")
    ap.add_argument("--work", type=Path, default=HERE / "out" / "work", help="scratch directory (wiped)")
    ap.add_argument("--out", type=Path, default=HERE / "out", help="where results.json/results.md go")
    ap.add_argument("--cache", choices=["cold", "warm"], default="cold")
    ap.add_argument("--change", type=float, default=0.02, help="fraction of 4 KiB blocks rewritten (0.02)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--prefault-gib",
        type=int,
        default=8,
        help="touch this much RAM first, so no step pays the VM's first-touch faults for page cache (8)",
    )
    args = ap.parse_args()

    ensure_tools()
    size = args.size
    work = args.work.resolve()
    fresh(work)
    work.mkdir(parents=True)
    need = size * 6
    free = shutil.disk_usage(work).free
    if free < need:
        sys.exit(f"{work}: {free >> 30} GiB free, the run needs about {need >> 30} GiB")
    args.out.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env.update(
        RESTIC_PASSWORD="bench",
        RESTIC_CACHE_DIR=str(work / "restic-cache"),
        BORG_BASE_DIR=str(work / "borg-base"),
        BORG_PASSPHRASE="",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
    )
    if args.prefault_gib:
        log(f"touching {args.prefault_gib} GiB of memory once (first-touch page faults are slow in this VM)")
        res_prefault = prefault(args.prefault_gib)
        log(f"  {res_prefault:.1f}s")
    cache = Cache(args.cache)
    r = Runner(work, cache, args.repeat, env)
    res: dict[str, Any] = {
        "size": size,
        "repeat": args.repeat,
        "cache": cache.mode,
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    steps: dict[str, dict[str, Any]] = {}
    res["steps"] = steps

    srcdir = work / "src"
    srcdir.mkdir()
    img = srcdir / "disk.img"
    data = work / "data.bin"
    log(f"generating a {size >> 20} MiB image in {work}")
    t = time.perf_counter()
    res["image"] = make_image(img, data, size, args.seed)
    res["image"]["allocated_bytes"] = allocated(img)
    res["image"]["generate_s"] = time.perf_counter() - t
    sha_orig = sha256_file(img)
    log(f"image: {res['image']}")

    log("machine limits")
    res["limits"] = machine_limits(r, img, data, size, res["image"]["data_bytes"])
    log(f"limits: {res['limits']}")
    fresh(data)

    # -- normal backup vs tar | zstd
    log("normal backups")
    s_norm = work / "vm-normal"
    tarzst = work / "tar" / "disk.tar.zst"
    tarzst.parent.mkdir()
    steps.update(
        r.rounds(
            [
                Step(
                    "vm_normal_take",
                    "vmbackup take (normal)",
                    [VMBACKUP, "store", "take", str(img), "--dir", str(s_norm), "--id", "norm1", "--json"],
                    [img],
                    reset=lambda: fresh(s_norm),
                ),
                Step(
                    "tar_zstd",
                    "tar -S | zstd -T0 -3",
                    ["bash", "-c", f"set -o pipefail; tar -S -cf - disk.img | zstd -q -T0 -3 -o {tarzst}"],
                    [img],
                    reset=lambda: fresh(tarzst),
                    cwd=srcdir,
                ),
            ]
        )
    )
    steps["vm_normal_take"]["json"] = json.loads(steps["vm_normal_take"]["stdout"])
    steps["vm_normal_take"]["stored_bytes"] = du(s_norm)
    steps["tar_zstd"]["stored_bytes"] = tarzst.stat().st_size

    # -- first backups of the original image
    log("first backups")
    s_inc = work / "vm-inc"
    restic_dir, borg_dir = work / "restic", work / "borg"
    restic_repo, borg_repo = restic_dir / "repo", borg_dir / "repo"

    def restic_init() -> None:
        fresh(restic_dir, work / "restic-cache")
        restic_dir.mkdir()
        subprocess.run(["restic", "init", "-q", "--repo", str(restic_repo)], check=True, env=env, capture_output=True)

    def borg_init() -> None:
        fresh(borg_dir, work / "borg-base")
        borg_dir.mkdir()
        subprocess.run(["borg", "init", "--encryption=none", str(borg_repo)], check=True, env=env, capture_output=True)

    restic_init()
    borg_init()
    vm_inc_take = [VMBACKUP, "store", "take", str(img), "--incremental", "--dir", str(s_inc), "--json", "--id"]
    restic_backup = ["restic", "backup", "-q", "--repo", str(restic_repo), "--host", "bench", str(img)]
    borg_create = ["borg", "create", "--compression", "zstd,3"]
    steps.update(
        r.rounds(
            [
                Step(
                    "vm_inc_take1",
                    "vmbackup take --incremental (1st)",
                    [*vm_inc_take, "inc1"],
                    [img],
                    reset=lambda: fresh(s_inc),
                ),
                Step("restic_backup1", "restic backup (1st)", restic_backup, [img], reset=restic_init),
                Step(
                    "borg_create1",
                    "borg create (1st)",
                    [*borg_create, f"{borg_repo}::first", "disk.img"],
                    [img],
                    reset=borg_init,
                    cwd=srcdir,
                ),
            ]
        )
    )
    steps["vm_inc_take1"]["json"] = json.loads(steps["vm_inc_take1"]["stdout"])
    steps["vm_inc_take1"]["stored_bytes"] = du(s_inc)
    steps["restic_backup1"]["stored_bytes"] = du(restic_repo)
    steps["borg_create1"]["stored_bytes"] = du(borg_repo)
    state_dirs = (s_inc, restic_dir, work / "restic-cache", borg_dir, work / "borg-base")
    if args.repeat > 1:  # pristine copies so a second backup can be repeated from the same starting point
        for d in state_dirs:
            snapshot(d, d.with_name(d.name + ".pristine"))

    # -- restores
    rdir = work / "restore"
    rdir.mkdir()
    verified: dict[str, bool] = {}
    res["verified"] = verified

    def restore(
        key: str, name: str, argv: list[str], inputs: list[Path], out: Path, want: str, subdir: bool = False
    ) -> Step:
        """A restore to `out`; with `subdir`, the tool writes into out's directory, its working directory."""
        clean = out.parent if subdir else out

        def reset() -> None:
            fresh(clean)
            if subdir:
                clean.mkdir(parents=True)

        reset()
        return Step(key, name, argv, inputs, reset=reset, cwd=clean if subdir else None, out=out, want=want)

    def restores(group: list[Step]) -> None:
        steps.update(r.rounds(group))
        for st in group:
            steps[st.key]["restored_allocated_bytes"] = allocated(st.out)
            ok = verified[st.key] = sha256_file(st.out) == st.want
            log(f"  {st.key}: sha256 {'matches' if ok else 'DIFFERS'}")
            st.reset()

    restic_restore = ["restic", "restore", "-q", "--repo", str(restic_repo), "--host", "bench", "--target"]
    log("restores of the original")
    restores(
        [
            restore(
                "vm_normal_restore",
                "vmbackup restore (normal)",
                [VMBACKUP, "store", "restore", "norm1", str(rdir / "n.img"), "--dir", str(s_norm), "--json"],
                [s_norm],
                rdir / "n.img",
                sha_orig,
            ),
            restore(
                "vm_inc_restore1",
                "vmbackup restore (incremental, 1st)",
                [VMBACKUP, "store", "restore", "inc1", str(rdir / "i1.img"), "--dir", str(s_inc), "--json"],
                [s_inc],
                rdir / "i1.img",
                sha_orig,
            ),
            restore(
                "tar_restore",
                "zstd -dc | tar -xSf -",
                ["bash", "-c", f"set -o pipefail; zstd -q -dc {tarzst} | tar -xSf -"],
                [tarzst],
                rdir / "t" / "disk.img",
                sha_orig,
                subdir=True,
            ),
            restore(
                "restic_restore1",
                "restic restore (1st)",
                [*restic_restore, str(rdir / "r1"), "latest"],
                [restic_repo],
                rdir / "r1" / str(img).lstrip("/"),
                sha_orig,
            ),
            restore(
                "borg_extract1",
                "borg extract --sparse (1st)",
                ["borg", "extract", "--sparse", f"{borg_repo}::first"],
                [borg_repo],
                rdir / "b1" / "disk.img",
                sha_orig,
                subdir=True,
            ),
        ]
    )
    fresh(rdir / "r1", tarzst.parent, s_norm)

    # -- the change
    log(f"rewriting {args.change:.0%} of the 4 KiB blocks")
    res["change"] = change_image(img, size, args.change, args.seed + 100)
    res["image"]["allocated_after_change"] = allocated(img)
    sha_changed = sha256_file(img)
    log(f"change: {res['change']}")

    # -- second backups
    log("second backups")

    def back_to(*dirs: Path) -> Any:
        def reset() -> None:
            for d in dirs:
                fresh(d)
                snapshot(d.with_name(d.name + ".pristine"), d)

        return reset

    before = {"vm_inc_take2": du(s_inc), "restic_backup2": du(restic_repo), "borg_create2": du(borg_repo)}
    steps.update(
        r.rounds(
            [
                Step(
                    "vm_inc_take2",
                    "vmbackup take --incremental (2nd)",
                    [*vm_inc_take, "inc2"],
                    [img],
                    reset=back_to(s_inc),
                ),
                Step(
                    "restic_backup2",
                    "restic backup (2nd)",
                    restic_backup,
                    [img],
                    reset=back_to(restic_dir, work / "restic-cache"),
                ),
                Step(
                    "borg_create2",
                    "borg create (2nd)",
                    [*borg_create, f"{borg_repo}::second", "disk.img"],
                    [img],
                    reset=back_to(borg_dir, work / "borg-base"),
                    cwd=srcdir,
                ),
            ]
        )
    )
    steps["vm_inc_take2"]["json"] = json.loads(steps["vm_inc_take2"]["stdout"])
    steps["vm_inc_take2"]["stored_bytes"] = du(s_inc) - before["vm_inc_take2"]
    steps["restic_backup2"]["stored_bytes"] = du(restic_repo) - before["restic_backup2"]
    steps["borg_create2"]["stored_bytes"] = du(borg_repo) - before["borg_create2"]
    for d in state_dirs:
        fresh(d.with_name(d.name + ".pristine"))

    # -- restores of the changed image
    log("restores of the changed image")
    restores(
        [
            restore(
                "vm_inc_restore2",
                "vmbackup restore (incremental, 2nd)",
                [VMBACKUP, "store", "restore", "inc2", str(rdir / "i2.img"), "--dir", str(s_inc), "--json"],
                [s_inc],
                rdir / "i2.img",
                sha_changed,
            ),
            restore(
                "restic_restore2",
                "restic restore (2nd)",
                [*restic_restore, str(rdir / "r2"), "latest"],
                [restic_repo],
                rdir / "r2" / str(img).lstrip("/"),
                sha_changed,
            ),
            restore(
                "borg_extract2",
                "borg extract --sparse (2nd)",
                ["borg", "extract", "--sparse", f"{borg_repo}::second"],
                [borg_repo],
                rdir / "b2" / "disk.img",
                sha_changed,
                subdir=True,
            ),
        ]
    )
    fresh(rdir / "r2")

    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res["targets"] = targets(res)
    res["bounds"] = bounds(res)
    for s in steps.values():
        s.pop("stdout", None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(res, indent=1, default=str)
    (args.out / "results.json").write_text(text)
    (args.out / f"results-{stamp}.json").write_text(text)
    md = markdown(res)
    (args.out / "results.md").write_text(md)
    print(md)
    if not args.keep:
        fresh(work)
    if not all(verified.values()):
        sys.exit("some restored image differs from its source")


# -- report -----------------------------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    s = res["steps"]

    def t(name: str, value: float, limit: float) -> dict[str, Any]:
        return {"target": name, "value": round(value, 3), "limit": limit, "met": value <= limit}

    out = [
        t("normal backup wall / tar|zstd wall", s["vm_normal_take"]["wall_s"] / s["tar_zstd"]["wall_s"], 0.5),
        t(
            "normal archive size / tar.zst size",
            s["vm_normal_take"]["stored_bytes"] / s["tar_zstd"]["stored_bytes"],
            1.1,
        ),
        t("incremental (2nd) wall / restic 2nd wall", s["vm_inc_take2"]["wall_s"] / s["restic_backup2"]["wall_s"], 0.5),
        t(
            "incremental (2nd) new bytes / restic 2nd new bytes",
            s["vm_inc_take2"]["stored_bytes"] / s["restic_backup2"]["stored_bytes"],
            0.25,
        ),
        t(
            "normal restore wall / restic restore (1st) wall",
            s["vm_normal_restore"]["wall_s"] / s["restic_restore1"]["wall_s"],
            0.5,
        ),
        t(
            "incremental restore (2nd) wall / restic restore (2nd) wall",
            s["vm_inc_restore2"]["wall_s"] / s["restic_restore2"]["wall_s"],
            0.5,
        ),
    ]
    for k, v in s.items():
        if k.startswith("vm_"):
            out.append(t(f"peak RSS MiB: {v['name']}", v["maxrss_mib"], 150))
    return out


def bounds(res: dict[str, Any]) -> dict[str, Any]:
    """Floors from the machine limits for each vmbackup step: seconds each resource needs at best."""
    lim, s, img = res["limits"], res["steps"], res["image"]
    ncpu = res["machine"]["nproc"] or 1
    data = img["data_bytes"]

    def sec(nbytes: float, mbps: float, cores: int = 1) -> float:
        return nbytes / (mbps * 1e6 * cores)

    read = lim["read_data_cold_MBps"] if res["cache"] == "cold" else lim["cat_img_warm_MBps"]
    out: dict[str, Any] = {}

    def put(key: str, floors: dict[str, float]) -> None:
        wall = s[key]["wall_s"]
        top = max(floors, key=lambda k: floors[k])
        out[key] = {
            "floors_s": {k: round(v, 2) for k, v in floors.items()},
            "bound_by": top,
            "floor_s": round(floors[top], 2),
            "wall_over_floor": round(wall / floors[top], 2),
        }

    norm_out = s["vm_normal_take"]["stored_bytes"]
    put(
        "vm_normal_take",
        {
            "read data": sec(data, read),
            f"zstd -2 wlog=22,hlog=17 (the archive's setting) on {ncpu} cores": sec(
                data, lim.get("zstd_archive_T1_data_MBps", lim["zstd3_T1_data_MBps"]), ncpu
            ),
            "BLAKE3 of the tar stream, 1 core": sec(data, lim["blake3_1core_MBps"]),
            "write+fsync archive": sec(norm_out, lim["write_fsync_MBps"]),
        },
    )
    for key in ("vm_inc_take1", "vm_inc_take2"):
        j = s[key]["json"]
        hashed = j["logical_bytes"] - j["zero_bytes"]  # non-zero chunks are hashed
        new_raw = hashed - j["reused_bytes"]  # and the new ones compressed
        put(
            key,
            {
                "read data": sec(j["bytes_read"], read),
                f"BLAKE3 + zstd -3 (new chunks) on {ncpu} cores": sec(hashed, lim["blake3_1core_MBps"], ncpu)
                + sec(new_raw, lim["zstd3_T1_data_MBps"], ncpu),
                "write+fsync new chunks": sec(s[key]["stored_bytes"], lim["write_fsync_MBps"]),
            },
        )
    restored = data  # the normal restore writes the non-zero data
    put(
        "vm_normal_restore",
        {
            # Frames decompressed on every core (frame index, meta version 2); the whole-stream BLAKE3 is
            # serial but overlapped, so the floor is the larger of the two.
            f"unzstd on {ncpu} cores (frames; BLAKE3 overlapped)": max(
                sec(restored, lim["unzstd_data_MBps"], ncpu), sec(restored, lim["blake3_1core_MBps"])
            ),
            "write+fsync data": sec(restored, lim["write_fsync_MBps"]),
        },
    )
    for key, take in (("vm_inc_restore1", "vm_inc_take1"), ("vm_inc_restore2", "vm_inc_take2")):
        nz = s[take]["json"]["logical_bytes"] - s[take]["json"]["zero_bytes"]
        put(
            key,
            {
                f"unzstd + BLAKE3 on {ncpu} cores": sec(nz, lim["unzstd_data_MBps"], ncpu)
                + sec(nz, lim["blake3_1core_MBps"], ncpu),
                "write+fsync data": sec(nz, lim["write_fsync_MBps"]),
            },
        )
    return out


def _mb(n: float) -> str:
    return f"{n / MiB:,.1f}"


def markdown(res: dict[str, Any]) -> str:
    s, img, ch, lim, m = res["steps"], res["image"], res["change"], res["limits"], res["machine"]
    size = res["size"]
    L = []
    L.append(
        f"Image: {_mb(size)} MiB logical, {_mb(img['data_bytes'])} MiB non-zero data "
        f"({_mb(img['hole'])} holes, {_mb(img['zeros'])} written zeros, {_mb(img['random'])} random, "
        f"{_mb(img['text'])} text, {_mb(img['repeat'])} repeated-block region).  "
        f"Change: {ch['blocks_changed']} blocks of 4 KiB ({_mb(ch['bytes_changed'])} MiB) in {ch['clusters']} "
        f"clusters, touching {ch['chunks_1mib_touched']} of {ch['chunks_1mib_total']} 1 MiB chunks.  "
        f"Cache: {res['cache']}; each step run {res['repeat']}x, fastest kept."
    )
    L.append("")
    L.append("| machine limit | MB/s |")
    L.append("|---|---:|")
    names = {
        "cat_img_cold_MBps": "`cat img` cold cache (logical size, holes included)",
        "read_data_cold_MBps": "`cat` of the non-zero data, cold cache",
        "cat_img_warm_MBps": "`cat img` warm cache",
        "zstd1_T1_img_MBps": "`zstd -1 -T1 img` (logical size)",
        "zstd1_T1_data_MBps": "`zstd -1 -T1` on the non-zero data",
        "zstd3_T1_data_MBps": "`zstd -3 -T1` on the non-zero data",
        "zstd_archive_T1_data_MBps": "`zstd -2 --zstd=wlog=22,hlog=17 -T1` (the normal archive's setting), same",
        "unzstd_data_MBps": "`zstd -d` (output MB/s) on the non-zero data",
        "blake3_1core_MBps": "BLAKE3, 1 core (python blake3)",
        "sha256_1core_MBps": "SHA-256, 1 core (hashlib)",
        "sha256sum_1core_MBps": "`sha256sum`",
        "b3sum_1core_MBps": "`b3sum --num-threads 1`",
        "write_fsync_MBps": "write + fsync (`dd conv=fsync`)",
    }
    for k, label in names.items():
        if k in lim:
            L.append(f"| {label} | {lim[k]:,.0f} |")
    L.append(f"| zstd -3 ratio on the non-zero data | {lim['zstd3_ratio_data']:.2f}x |")
    L.append("")
    L.append("| step | tool | wall s | CPU s | peak RSS MiB | stored / new MiB | logical MB/s |")
    L.append("|---|---|---:|---:|---:|---:|---:|")
    rows = [
        ("full backup", "vm_normal_take"),
        ("full backup", "tar_zstd"),
        ("1st backup", "vm_inc_take1"),
        ("1st backup", "restic_backup1"),
        ("1st backup", "borg_create1"),
        ("2nd backup (after 2%)", "vm_inc_take2"),
        ("2nd backup (after 2%)", "restic_backup2"),
        ("2nd backup (after 2%)", "borg_create2"),
        ("restore original", "vm_normal_restore"),
        ("restore original", "vm_inc_restore1"),
        ("restore original", "tar_restore"),
        ("restore original", "restic_restore1"),
        ("restore original", "borg_extract1"),
        ("restore changed", "vm_inc_restore2"),
        ("restore changed", "restic_restore2"),
        ("restore changed", "borg_extract2"),
    ]
    for label, key in rows:
        st = s[key]
        stored = _mb(st["stored_bytes"]) if "stored_bytes" in st else ""
        ok = res["verified"].get(key)
        tool = st["name"].replace("|", "\\|") + ("" if ok is None else (" ✓" if ok else " ✗ MISMATCH"))
        L.append(
            f"| {label} | {tool} | {st['wall_s']:.2f} | {st['cpu_s']:.2f} | {st['maxrss_mib']:.0f} | "
            f"{stored} | {size / st['wall_s'] / 1e6:,.0f} |"
        )
    L.append("")
    L.append("| target | measured | limit | met |")
    L.append("|---|---:|---:|---|")
    for t in res["targets"]:
        target = t["target"].replace("|", "\\|")
        L.append(f"| {target} | {t['value']:.2f} | {t['limit']} | {'yes' if t['met'] else '**no**'} |")
    L.append("")
    L.append("| vmbackup step | bound by (floor from the machine limits) | floor s | wall / floor |")
    L.append("|---|---|---:|---:|")
    L.append(f"| CLI start-up (`vmbackup store --help`), in every step | | {lim['cli_start_s']:.2f} | |")
    for key, b in res["bounds"].items():
        L.append(f"| {s[key]['name']} | {b['bound_by']} | {b['floor_s']:.2f} | {b['wall_over_floor']:.1f}x |")
    L.append("")
    L.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, kernel {m['kernel']}; "
        f"{m['restic']}; {m['borg']}; {m['tar']}; {m['zstd'].strip('* ')}; vmbackup {m['vmbackup_commit']}"
        f"{' (src modified)' if m['vmbackup_dirty'] else ''}, code run from {m.get('vmbackup_src', '?')}."
    )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
