"""Text every report format can hold: odd file names never cost a finished run its reports.

Linux file names are bytes; Python carries the undecodable ones as lone surrogates
(surrogateescape), and JSON may hold unpaired surrogates too.  Neither encodes to UTF-8,
and control characters in a name would break a markdown table or a terminal line.
Invisible format characters (bidi overrides such as U+202E, zero-width spaces, line separators: Unicode
categories Cf, Zl, Zp) would make a page id look like another one, so they are escaped too (`\\u202e`).
Reports show such characters as backslash escapes (the bytes of a file name as `\\xff`).
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import unicodedata
from typing import Any

# C0 and C1 controls and DEL, except tab and newline (tracebacks keep their lines)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """`text` as encodable UTF-8 without control characters; unchanged when it already is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _escape_surrogates(text)
    text = _CONTROL.sub(lambda m: _escape(m.group()), text)
    return text if text.isascii() else "".join(_escape(c) if _invisible(c) else c for c in text)


_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})  # controls, format characters (bidi, zero-width), separators


def _invisible(char: str) -> bool:
    return char not in "\t\n" and unicodedata.category(char) in _INVISIBLE


def _escape(char: str) -> str:
    """`\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`, as Python writes the character in a string literal."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`safe_text` on one line (for a console line)."""
    return safe_text(text).replace("\n", "\\n")


def html_line(value: Any) -> str:
    """One line of HTML text: odd characters shown as escapes (`printable`), markup inert."""
    return html.escape(printable(str(value)))


def _escape_surrogates(text: str) -> str:
    try:  # surrogateescape'd bytes of a file name: show the bytes
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:  # an unpaired surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_tree(obj: Any, _memo: dict[int, Any] | None = None) -> Any:
    """A copy of a run (dataclasses, dicts, lists) whose every string went through `safe_text`.

    Containers shared by several pages (a cached trace) stay shared in the copy.
    """
    if isinstance(obj, str):
        return safe_text(obj)
    if not isinstance(obj, dict | list | tuple) and not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return obj
    memo = {} if _memo is None else _memo
    if id(obj) not in memo:
        memo[id(obj)] = _copy(obj, memo)
    return memo[id(obj)]


def _copy(obj: Any, memo: dict[int, Any]) -> Any:
    if isinstance(obj, dict):
        return {safe_tree(k, memo): safe_tree(v, memo) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(safe_tree(v, memo) for v in obj)
    changes = {f.name: safe_tree(getattr(obj, f.name), memo) for f in dataclasses.fields(obj) if f.init}
    return dataclasses.replace(obj, **changes)
