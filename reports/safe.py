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
import json
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
    """A run (dataclasses, dicts, lists) whose every string went through `safe_text`: a copy of what holds a
    string that changes, the same object where nothing would (`_plainly_safe`: a run's traces are millions of
    numbers and op names, and walking them in Python cost more than writing every report).

    Containers shared by several pages (a cached trace) stay shared in the copy.
    """
    if isinstance(obj, str):
        return safe_text(obj)
    if not isinstance(obj, dict | list | tuple) and not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return obj
    memo = {} if _memo is None else _memo
    if id(obj) not in memo:
        memo[id(obj)] = _checked(obj, memo)
    return memo[id(obj)]


BIG = 512  # elements: a tree this large is checked piece by piece, so what pages share is checked once a run


def _checked(obj: Any, memo: dict[int, Any]) -> Any:
    """``obj`` when no string in it would change, else its copy.  A small tree of plain data: one check of its JSON.
    A large one (a page's trace: thousands of decode steps shared with other pages, thousands of calls) piece by
    piece: a dict value by value, a long list by the elements no page checked before, all of them in one check."""
    if not _checkable(obj):
        return _copy(obj, memo)
    if not _big(obj):
        return obj if _plainly_safe(obj) else _copy(obj, memo)
    if isinstance(obj, dict):
        out = {safe_tree(k, memo): safe_tree(v, memo) for k, v in obj.items()}
        return obj if len(out) == len(obj) and all(k in obj and obj[k] is v for k, v in out.items()) else out
    unseen = [v for v in obj if isinstance(v, dict | list | tuple) and id(v) not in memo]
    if unseen and all(map(_checkable, unseen)) and _plainly_safe(unseen):
        for v in unseen:
            memo[id(v)] = v
    items = [safe_tree(v, memo) for v in obj]
    return obj if all(a is b for a, b in zip(items, obj, strict=True)) else type(obj)(items)


def _big(obj: Any) -> bool:
    """Whether ``obj`` holds more than BIG elements in its dicts and lists (looks at no more than that many)."""
    budget, stack = BIG, [obj]
    while stack:
        x = stack.pop()
        budget -= len(x)
        if budget < 0:
            return True
        stack.extend(v for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, dict | list | tuple))
    return False


# In json.dumps' output (ensure_ascii off) the controls safe_text escapes show as \u0000-\u001f (bar \t, \n)
# or \b, \f, \r, and DEL as itself; an escaped backslash before such letters is a false alarm, which only costs
# the walk.
_JSON_CONTROL = re.compile(r"\\u00(?:0[0-8bBcCdDeEfF]|1[0-9a-fA-F])|\\[bfr]|\x7f")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _checkable(obj: Any) -> bool:
    """Dicts and lists of plain data: a run or a list of pages is walked, so one check never holds a whole run's
    JSON (a page's trace at a time)."""
    if isinstance(obj, dict):
        return True
    return isinstance(obj, list | tuple) and not (obj and dataclasses.is_dataclass(obj[0]))


def _plainly_safe(obj: Any) -> bool:
    """Whether no string in ``obj`` (values, keys, dataclass fields) would change under `safe_text`: one C-speed
    json.dumps and a scan of its text.  False when unsure (a key json cannot write, a value it cannot hold)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, check_circular=False, default=_fields)
        text.encode("utf-8")  # a lone surrogate (json writes it through unescaped)
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return False
    if _JSON_CONTROL.search(text):
        return False
    return text.isascii() or not any(_invisible(c) for c in set(_NON_ASCII.findall(text)))


def _fields(obj: Any) -> Any:
    """json.dumps' fallback: a dataclass as its fields; anything else holds no string safe_tree would touch."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return None


def _copy(obj: Any, memo: dict[int, Any]) -> Any:
    if isinstance(obj, dict):
        return {safe_tree(k, memo): safe_tree(v, memo) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(safe_tree(v, memo) for v in obj)
    changes = {f.name: safe_tree(getattr(obj, f.name), memo) for f in dataclasses.fields(obj) if f.init}
    return dataclasses.replace(obj, **changes)
