"""Characters no text of ours may hold: refused on the way in (bodies, paths, query strings), replaced on the way out.

PostgreSQL ``text`` cannot hold U+0000 (psycopg refuses it: a 500 before this check); XML 1.0 cannot carry the C0
controls other than tab, LF and CR, nor U+FFFE/U+FFFF, not even as character references, so one such character in
a stored note made every XML listing holding it unreadable; a lone surrogate (``"\\ud800"`` in JSON) has no UTF-8
form, so neither database can store it. One rule for all of them keeps what one format or database accepts
readable in the others.
"""

from __future__ import annotations

import re

# Outside XML 1.0's Char production (https://www.w3.org/TR/xml/#charsets); a superset of what PostgreSQL refuses.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

MESSAGE = "contains a character that cannot be stored"


def unstorable(text: str) -> str | None:
    """The first character of ``text`` that cannot be stored, as ``U+XXXX``, or None."""
    found = _UNSTORABLE.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


def refusal(text: str) -> str | None:
    """The message for a field whose value is ``text``, or None when the value is fine."""
    char = unstorable(text)
    return f"{MESSAGE} ({char})" if char else None


def scrub(text: str) -> str:
    """``text`` with every such character replaced by U+FFFD, for output that must stay well-formed (data stored
    before these characters were refused, field names echoed in error messages)."""
    return _UNSTORABLE.sub("\ufffd", text)
