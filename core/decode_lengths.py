"""Per-page decode lengths: how many decode steps each page is verified at (`--decode-tokens`, issue 24).

A page's decode cost grows with its output length, so one length for every page (the old `--decode-tokens 16`)
under-states a real page by two orders of magnitude.  The length is a workload input, chosen per page by one of:

- a number: every page (as before);
- ``from-reference``: an OmniDocBench page's reference text counted with a user-named `tokenizers` JSON, or, without
  one, estimated from its characters (`estimate_tokens`); an embedded (synthetic) page has no text and gets the
  typical length of its document type (`TYPICAL_DECODE_TOKENS`);
- ``--decode-tokens-file``: a JSON or CSV/TSV mapping page id -> decode tokens (`read_length_file`).

`decode_tokens = K` is K decode forwards after the prefill (docs/conventions.md): generating N text tokens and the
end-of-sequence token is N + 1 tokens, the first from the prefill logits, so a reference of N tokens is K = N.

Torch-free: the options and the page loaders use it.  Bad input raises `DecodeLengthError` (a `WorkloadError`:
exit 2, one line naming the fix).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.workload import WorkloadError

FROM_REFERENCE = "from-reference"
LENGTH_FILE_SUFFIXES = {".json": "json", ".csv": ",", ".tsv": "\t"}
MAX_LENGTH_FILE_BYTES = 64 << 20  # a mapping of a million pages is ~30 MB
_INTEGER = re.compile(r"-?[0-9]+")


class DecodeLengthError(WorkloadError):
    """A decode length that cannot be used (a bad mapping file, a page without one): exit 2 before any work."""


# --- the estimate without a tokenizer ---------------------------------------------------------------------------

# DeepSeek's own rule of thumb for its tokenizer (DeepSeek API docs, "Token & Token Usage",
# https://api-docs.deepseek.com/quick_start/token_usage): "1 English character ~ 0.3 token, 1 Chinese character ~
# 0.6 token".  The page is written for the DeepSeek-V2/V3 tokenizer it links; DeepSeek-OCR's decoder has the same
# 129,280-entry vocabulary (docs/deepseek-ocr-facts.md).  An ASSUMPTION, not measured here (the real tokenizer
# cannot be downloaded on these machines): name a tokenizer with --tokenizer for exact counts.
# Tenths of a token per character, so the arithmetic stays exact integers.
TENTHS_PER_CJK_CHAR = 6
TENTHS_PER_OTHER_CHAR = 3
# CJK ideographs, kana, hangul and full-width forms count as "Chinese" characters; everything else (Latin, digits,
# punctuation, LaTeX and HTML markup, spaces) as "English" ones.
_CJK = re.compile(
    "[\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff]"
)


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` by DeepSeek's published ratio: 0.6 per CJK character, 0.3 per other character (whitespace
    included, as the ratio is per character of text), rounded up: a page with any text decodes at least one step."""
    cjk = len(_CJK.findall(text))
    tenths = TENTHS_PER_CJK_CHAR * cjk + TENTHS_PER_OTHER_CHAR * (len(text) - cjk)
    return -(-tenths // 10)


# --- typical lengths per document type (pages without reference text) ------------------------------------------


@dataclass(frozen=True)
class TypicalLength:
    """The output tokens a page of one OmniDocBench document type typically decodes to."""

    data_source: str  # as OmniDocBench's page_attribute.data_source spells it
    decode_tokens: int
    basis: str  # why this figure


# ASSUMPTIONS, the one statement of them.  Anchors: a real page decodes to about 1,100-1,500 output tokens and
# OmniDocBench runs average about 1,440 per page (issue 24); the DeepSeek-OCR paper reports that newspapers carry
# several thousand text tokens (4-5k, quoted from memory of its OmniDocBench per-type discussion, not re-checked
# here).  The spread between types follows text density (slides and notes sparse, newspapers dense) and is not
# measured.  The unweighted mean of the nine rows is (1,600 + 1,100 + 1,300 + 1,400 + 1,500 + 2,900 + 700 + 1,700
# + 760) / 9 = 12,960 / 9 = 1,440.  Replace with measured figures when a run over the real set is available.
TYPICAL_DECODE_TOKENS: tuple[TypicalLength, ...] = (
    TypicalLength("academic_literature", 1600, "dense two-column text, formulas"),
    TypicalLength("book", 1100, "one text column, smaller pages"),
    TypicalLength("colorful_textbook", 1300, "text with figures and boxes"),
    TypicalLength("exam_paper", 1400, "questions, formulas, tables"),
    TypicalLength("magazine", 1500, "multi-column text with pictures"),
    TypicalLength("newspaper", 2900, "densest type; the paper's 4-5k is its upper range"),
    TypicalLength("note", 700, "handwritten or sparse notes"),
    TypicalLength("research_report", 1700, "financial reports: text and tables"),
    TypicalLength("PPT2PDF", 760, "slides: titles and bullets"),
)
_TYPICAL = {t.data_source: t for t in TYPICAL_DECODE_TOKENS}


def typical_length(data_source: object) -> TypicalLength | None:
    """The typical length of a document type, or None for a type the table does not know."""
    return _TYPICAL.get(data_source) if isinstance(data_source, str) else None


# --- the option -------------------------------------------------------------------------------------------------


def decode_tokens_arg(text: str) -> int | str:
    """`--decode-tokens`: an integer (a negative one is refused with the other bounds, naming the option), or
    ``from-reference``; anything else is a usage error."""
    if text.strip().lower() == FROM_REFERENCE:
        return FROM_REFERENCE
    if _INTEGER.fullmatch(text.strip()):
        return int(text)
    import argparse

    raise argparse.ArgumentTypeError(f"{text!r} is neither a number of decode steps >= 0 nor {FROM_REFERENCE}")


# --- a tokenizer the user names ---------------------------------------------------------------------------------


def load_token_counter(path: Path) -> Callable[[str], int]:
    """A `tokenizers` JSON (a tokenizer.json) as a function text -> token count, special tokens excluded (the
    decode steps produce text; the end-of-sequence token is the one after the last step).  Imported lazily: only
    ``--tokenizer`` needs the package."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DecodeLengthError(
            "--tokenizer needs the `tokenizers` package: pip install tokenizers, or drop --tokenizer"
        ) from None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the package raises its own Exception for a missing file or bad JSON
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DecodeLengthError(
            f"--tokenizer {path} cannot be loaded ({reason[:160]}): name a tokenizers JSON file (tokenizer.json)"
        ) from None

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


# --- the mapping file -------------------------------------------------------------------------------------------


def read_length_file(path: Path) -> dict[str, int]:
    """page id -> decode tokens from a JSON object or a two-column CSV/TSV (an optional header row whose first cell
    is ``page_id``).  Values must be integers >= 0; whether every page is there is checked against the pages
    (`lengths_for`)."""
    kind = LENGTH_FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DecodeLengthError(
            f"--decode-tokens-file {path}: name a .json, .csv or .tsv file (page id -> decode tokens)"
        )
    text = _read_text(path)
    pairs = _json_pairs(path, text) if kind == "json" else _table_pairs(path, text, kind)
    out: dict[str, int] = {}
    for page_id, value in pairs:
        if page_id in out:
            raise DecodeLengthError(f"--decode-tokens-file {path}: page {page_id!r} is listed twice: keep one line")
        out[page_id] = _length_value(path, page_id, value, text_cells=kind != "json")
    return out


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_LENGTH_FILE_BYTES:
            raise DecodeLengthError(
                f"--decode-tokens-file {path} is larger than {MAX_LENGTH_FILE_BYTES >> 20} MiB: split the run"
            )
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DecodeLengthError(f"--decode-tokens-file {path} not found: fix the path") from None
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise DecodeLengthError(f"--decode-tokens-file {path} cannot be read ({why}): fix the file") from None


def _json_pairs(path: Path, text: str) -> list[tuple[str, object]]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if isinstance(exc, ValueError) else "nested too deep"
        raise DecodeLengthError(f"--decode-tokens-file {path} is not valid JSON ({reason}): fix the file") from None
    if not isinstance(data, dict):
        raise DecodeLengthError(
            f'--decode-tokens-file {path} must hold one JSON object {{"page id": decode tokens, ...}}'
        )
    return list(data.items())


def _table_pairs(path: Path, text: str, delimiter: str) -> list[tuple[str, object]]:
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if any(c.strip() for c in r)]
    if rows and rows[0] and rows[0][0].strip().lower() == "page_id":
        rows = rows[1:]  # the header
    pairs = []
    for n, row in enumerate(rows, 1):
        if len(row) != 2:
            raise DecodeLengthError(
                f"--decode-tokens-file {path}: data row {n} has {len(row)} cells: write page_id"
                f"{'<tab>' if delimiter == chr(9) else ','}decode_tokens"
            )
        pairs.append((row[0].strip(), row[1].strip()))
    return pairs


def _length_value(path: Path, page_id: str, value: object, *, text_cells: bool) -> int:
    """A decode length from the file: a JSON integer (``1.5``, ``true``, ``"12"`` refused: a string in JSON is a
    mistake), or a CSV/TSV cell of digits (``1.5``, ``many`` refused); a negative one is refused either way."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif text_cells and isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    else:
        raise DecodeLengthError(
            f"--decode-tokens-file {path}: page {page_id!r} has {str(value)[:40]!r}, not an integer: "
            "give a whole number of decode steps"
        )
    if number < 0:
        raise DecodeLengthError(
            f"--decode-tokens-file {path}: page {page_id!r} has {number}: decode tokens must be >= 0"
        )
    return number


def lengths_for(path: Path, mapping: dict[str, int], page_ids: Iterable[str]) -> dict[str, int]:
    """``mapping`` restricted to ``page_ids``; a page the file does not list is a `DecodeLengthError` naming it (and
    how many more are missing).  Ids the file lists beyond the pages (a --limit or --sample run) are fine."""
    ids = list(page_ids)
    missing = [p for p in ids if p not in mapping]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DecodeLengthError(
            f"--decode-tokens-file {path} has no length for page {missing[0]!r}{more}: add it (ids as the page "
            "source names them)"
        )
    return {p: mapping[p] for p in ids}
