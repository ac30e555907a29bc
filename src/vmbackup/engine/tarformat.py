"""Writing and reading the one tar member of a normal backup, in PAX format with GNU sparse 1.0.

Python's tarfile can read sparse members but cannot write them, so the headers are built by hand here.  The
layout (what GNU tar writes with `--sparse --format=posix`, and what `tar -xSf -` restores as a sparse file):

    512  ustar header, typeflag 'x'  "./PaxHeaders/<name>"
    n*512 PAX records: GNU.sparse.major=1, GNU.sparse.minor=0, GNU.sparse.name=<name>,
          GNU.sparse.realsize=<image size> [, size=<member size> when it exceeds the 8 GiB octal field]
    512  ustar header, typeflag '0'  "GNUSparseFile.0/<name>", size = map block + data bytes
    m*512 sparse map, decimal text: "<count>\n" then "<offset>\n<length>\n" per data segment, NUL padded
          data segments back to back, then NUL padding to 512
    1024 end of archive (two zero blocks)
"""

from __future__ import annotations

from collections.abc import Sequence

BLOCK = 512
_OCTAL_LIMIT = 8**11  # an 11-digit octal size field holds < 8 GiB


class TarFormatError(ValueError):
    """The stream is not a member this module wrote."""


def pad(n: int) -> int:
    """Bytes of NUL padding after n bytes of data."""
    return -n % BLOCK


def _number(value: int, width: int) -> bytes:
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    # GNU base-256: high bit set, big-endian binary (only the size field can need it here).
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _header(name: str, size: int, typeflag: bytes, mtime: int) -> bytes:
    raw = name.encode()
    if len(raw) > 100:
        raise TarFormatError(f"member name too long: {name}")
    h = bytearray(BLOCK)
    h[0 : len(raw)] = raw
    h[100:108] = _number(0o600, 8)
    h[108:116] = _number(0, 8)
    h[116:124] = _number(0, 8)
    h[124:136] = _number(size, 12)
    h[136:148] = _number(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:  # the length counts its own digits
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def sparse_map_block(extents: Sequence[tuple[int, int]], realsize: int) -> bytes:
    """The map that opens the member's data.  GNU tar truncates the file to the end of the last entry, so a
    file ending in a hole gets a final zero-length entry at its size."""
    entries = list(extents)
    if not entries or sum(entries[-1]) < realsize:
        entries.append((realsize, 0))
    text = f"{len(entries)}\n" + "".join(f"{o}\n{n}\n" for o, n in entries)
    raw = text.encode()
    return raw + bytes(pad(len(raw)))


def member_start(name: str, realsize: int, extents: Sequence[tuple[int, int]], mtime: int) -> bytes:
    """Everything before the first data byte: PAX header, ustar header, sparse map."""
    mapblock = sparse_map_block(extents, realsize)
    size = len(mapblock) + sum(n for _, n in extents)
    records = [
        ("GNU.sparse.major", "1"),
        ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", name),
        ("GNU.sparse.realsize", str(realsize)),
    ]
    if size >= _OCTAL_LIMIT:
        records.append(("size", str(size)))
    pax = b"".join(_pax_record(k, v) for k, v in records)
    return (
        _header(f"./PaxHeaders/{name}", len(pax), b"x", mtime)
        + pax
        + bytes(pad(len(pax)))
        + _header(f"GNUSparseFile.0/{name}", size, b"0", mtime)
        + mapblock
    )


def member_end(data_bytes: int) -> bytes:
    """Padding after the data and the end-of-archive marker."""
    return bytes(pad(data_bytes)) + bytes(2 * BLOCK)


# -- reading ------------------------------------------------------------------------------------------------


def _parse_number(field: bytes) -> int:
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def check_header(block: bytes) -> tuple[bytes, int]:
    """(typeflag, size) of a ustar header block after checking its checksum."""
    if len(block) != BLOCK or block[257:262] != b"ustar":
        raise TarFormatError("not a ustar header")
    stored = _parse_number(block[148:156])
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise TarFormatError("tar header checksum mismatch")
    return block[156:157], _parse_number(block[124:136])


def parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        length = int(data[pos : data.index(b" ", pos)])
        if not pos < pos + length <= len(data):  # a record that ends nowhere (or never moves on) is not ours
            raise TarFormatError("bad PAX record length")
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].decode().partition("=")
        out[key] = value
        pos += length
    return out


def parse_sparse_map(block: bytes) -> tuple[list[tuple[int, int]], int]:
    """(extents, bytes consumed) from the start of the member data; consumed is a multiple of BLOCK.
    A trailing zero-length entry is dropped (it only marks the size)."""
    lines = block.split(b"\n")
    count = int(lines[0])
    if len(lines) < 2 * count + 2:
        raise TarFormatError("sparse map longer than expected")
    nums = [int(x) for x in lines[1 : 1 + 2 * count]]
    used = sum(len(x) + 1 for x in lines[: 1 + 2 * count])
    extents = [(nums[i], nums[i + 1]) for i in range(0, 2 * count, 2) if nums[i + 1]]
    return extents, used + pad(used)
