"""Bounded parsing of the engine's JSON documents: size and depth refused before json.loads sees them."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbackup.engine import documents
from vmbackup.engine.documents import MAX_DEPTH, DocumentError, parse
from vmbackup.storage import MemoryStorage


def _nested(depth: int, inner: str = "1") -> bytes:
    return ('{"a":' * (depth - 1) + "[" + inner + "]" + "}" * (depth - 1)).encode()


def test_nesting_up_to_the_limit_parses_and_one_more_is_refused() -> None:
    assert parse(_nested(MAX_DEPTH) + b" " * 10, 10_000)
    with pytest.raises(DocumentError, match=f"nests more than {MAX_DEPTH} levels"):
        parse(_nested(MAX_DEPTH + 1), 10_000)


@pytest.mark.parametrize(
    "inner",
    [
        '"' + "[" * 100 + '"',  # brackets inside a string are no nesting
        '"\\"' + "[" * 100 + '"',  # nor after an escaped quote
        '"\\\\", ' + '"' + "{" * 50 + '"',  # an escaped backslash does not escape the closing quote
        ", ".join(['"a[b"'] * 200),
    ],
)
def test_brackets_inside_strings_do_not_count(inner: str) -> None:
    raw = _nested(MAX_DEPTH, inner)
    assert json.loads(raw) == parse(raw, 100_000)


def test_deep_nesting_is_refused_without_recursing() -> None:
    with pytest.raises(DocumentError, match="nests more than"):
        parse(b"[" * 1_000_000 + b"]" * 1_000_000, 10**7)


def test_size_is_refused_before_reading() -> None:
    storage = MemoryStorage()
    storage.put("manifests/x.json", b"{}" + b" " * 100)
    with pytest.raises(DocumentError, match="more than the 50"):
        documents.read(storage, "manifests/x.json", 50)
    with pytest.raises(DocumentError, match="more than the 50"):
        parse(b"{}" + b" " * 100, 50)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300), st.text(alphabet='[]{}"\\:,a1 ', max_size=300).map(str.encode)))
def test_parse_raises_only_document_errors(raw: bytes) -> None:
    with contextlib.suppress(DocumentError):
        parse(raw, 1000)


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\', max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(alphabet='ab[]{}"\\', max_size=4), c, max_size=3),
        max_leaves=30,
    )
)
def test_depth_check_agrees_with_the_real_depth(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    raw = json.dumps({"v": value}).encode()
    if depth({"v": value}) <= MAX_DEPTH:
        assert parse(raw, 10**6) == {"v": value}
    else:
        with pytest.raises(DocumentError, match="nests"):
            parse(raw, 10**6)
