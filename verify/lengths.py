"""Each page's decode length, fixed before any work (`--decode-tokens N|from-reference`, `--decode-tokens-file`).

The rules and figures are `core.decode_lengths`'s; this applies them to a run's pages: it sets
`PageSpec.decode_tokens` (the workload takes it from there), says where each length came from in the page's
``decode_tokens_from`` attribute, and drops the reference text once it is counted.  A mapping file that does not
cover the pages, or a length past the decoder's positions, is `DecodeLengthError` (exit 2); a page whose own
reference text is too long to decode is a bad page, and the run goes on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from core.decode_lengths import (
    FROM_REFERENCE,
    DecodeLengthError,
    estimate_tokens,
    lengths_for,
    load_token_counter,
    read_length_file,
    typical_length,
)
from reports.model import PageSpec

FIXED, FILE = "fixed", "file"  # the third rule is core.decode_lengths.FROM_REFERENCE


@dataclasses.dataclass(frozen=True)
class DecodeLengths:
    """How a run chooses each page's decode length: one rule, from the options."""

    rule: str = FIXED  # FIXED (the run's --decode-tokens on every page), FROM_REFERENCE or FILE
    file: Path | None = None  # FILE: the mapping
    tokenizer: Path | None = None  # FROM_REFERENCE: counts the reference text (None: estimate_tokens)


def assign_decode_lengths(pages: list[PageSpec], lengths: DecodeLengths, room: int) -> list[PageSpec]:
    """``pages`` with their decode lengths set (``room``: the most decode steps the decoder's positions leave on the
    mode's longest page, `verify.cli.decode_room`) and their reference text dropped.  A page already bad (no image,
    a broken entry) gets no length: it is never run."""
    if lengths.rule == FILE and lengths.file is not None:
        return _from_file(pages, lengths.file, room)
    if lengths.rule == FROM_REFERENCE:
        counter, how = _counter(lengths.tokenizer)
        return [_from_reference(p, counter, how, room) if p.error is None else _dropped(p) for p in pages]
    return [_dropped(p) for p in pages]


def _dropped(page: PageSpec) -> PageSpec:
    return dataclasses.replace(page, reference_text=None)


def _with_length(page: PageSpec, tokens: int, source: str) -> PageSpec:
    attrs = {**page.attributes, "decode_tokens_from": source}
    return dataclasses.replace(page, decode_tokens=tokens, reference_text=None, attributes=attrs)


def _from_file(pages: list[PageSpec], path: Path, room: int) -> list[PageSpec]:
    """Every usable page's length from the file: a page it misses or a length past ``room`` stops the run (exit 2)."""
    usable = [p.page_id for p in pages if p.error is None]
    wanted = lengths_for(path, read_length_file(path), usable)
    for page_id, tokens in wanted.items():
        if tokens > room:
            raise DecodeLengthError(
                f"--decode-tokens-file {path}: page {page_id!r} has {tokens} decode tokens, past the {room} the "
                "decoder's positions leave on this mode's longest page: lower it (or --prompt-tokens)"
            )
    return [_with_length(p, wanted[p.page_id], "file") if p.page_id in wanted else _dropped(p) for p in pages]


def _counter(tokenizer: Path | None) -> tuple[Callable[[str], int], str]:
    """(text -> tokens, how it counts), loaded once per run: the tokenizer named, else the published estimate."""
    if tokenizer is None:
        return estimate_tokens, "reference text, estimated (0.3 token per character, 0.6 per CJK character)"
    return load_token_counter(tokenizer), f"reference text, tokenizer {tokenizer.name}"


def _from_reference(page: PageSpec, count: Callable[[str], int], how: str, room: int) -> PageSpec:
    """The page's reference text counted; without one, the typical length of its document type; without a known
    type, exit 2 naming the page and the fix."""
    if page.reference_text is not None:
        tokens, source = count(page.reference_text), how
    else:
        typical = typical_length(page.attributes.get("data_source"))
        if typical is None:
            raise DecodeLengthError(
                f"page {page.page_id!r} has no reference text and no document type with a typical length "
                "(core.decode_lengths.TYPICAL_DECODE_TOKENS): give --decode-tokens N or a --decode-tokens-file"
            )
        tokens, source = typical.decode_tokens, f"typical {typical.data_source} page (assumed)"
    page = _with_length(page, tokens, source)
    if tokens > room:  # this page's own text, not the user's input: the page is bad, the run goes on
        error = (
            f"{source}: {tokens} decode tokens, past the {room} the decoder's positions leave: "
            "verify it with a --decode-tokens-file length that fits"
        )
        return dataclasses.replace(page, error=error)
    return page
