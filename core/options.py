"""The workload options every CLI shares (`dsocr-analytic`, `dsocr-measure`, `run_verify_end2end*`).

One definition, so names, defaults, choices and help never drift apart; each CLI adds only what is
its own (pages and tolerances, a page size, a backend).  Torch-free: the analytic CLI uses it too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core.decode_lengths import FROM_REFERENCE, TENTHS_PER_CJK_CHAR, TENTHS_PER_OTHER_CHAR, decode_tokens_arg
from core.dtype_policy import DEFAULT_DTYPE, DTYPE_CHOICES
from core.families import DEFAULT_FAMILY, FAMILIES
from core.schema import ATTN_IMPLS, LM_HEAD_SCOPES
from core.workload import FAMILY_RULES

DEFAULT_MODE = "gundam"
DEFAULT_PROMPT_TOKENS = 12
DEFAULT_DECODE_TOKENS = 16
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


class UsageParser(argparse.ArgumentParser):
    """Usage errors as one line naming the fix, exit 2 (argparse's own code), without the usage dump."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help (skipped where there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def bool_word(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off in any case; any other word is a usage error, never a silent False."""
    try:
        return _BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of true/false (or 1/0, yes/no, on/off)") from None


def user_path(text: str) -> Path:
    """A path the user typed; `~` expands even where the shell left it (quoted, or after `--opt=`)."""
    return Path(text).expanduser()


def add_workload_options(
    parser: argparse.ArgumentParser, *, decode: bool = True, per_page_lengths: bool = False
) -> argparse._ArgumentGroup:
    """Mode and token options; ``decode=False`` for vision-only commands (no decode steps, lm_head, attention);
    ``per_page_lengths`` for the commands that verify many pages (decode length per page: core.decode_lengths)."""
    g = parser.add_argument_group("workload")
    g.add_argument(
        "--model",
        choices=FAMILIES,
        default=DEFAULT_FAMILY,
        help="model family (deepseek-ocr-2 has modes small 768, base 1024, gundam 1024 + 768 crops)",
    )
    modes = sorted({m for rules in FAMILY_RULES.values() for m in rules.modes})
    g.add_argument("--mode", choices=modes, default=DEFAULT_MODE, help="resolution preset")
    g.add_argument("--base-size", type=int, help="override the preset's base_size (global view)")
    g.add_argument("--image-size", type=int, help="override the preset's image_size")
    g.add_argument(
        "--crop-mode",
        nargs="?",
        const=True,
        type=bool_word,
        metavar="BOOL",
        help="override the preset's crop mode: bare or true/false (1/0, yes/no, on/off)",
    )
    g.add_argument(
        "--no-crop-mode", dest="crop_mode", action="store_false", default=None, help="same as --crop-mode false"
    )
    g.add_argument(
        "--prompt-tokens",
        type=int,
        default=DEFAULT_PROMPT_TOKENS,
        help="prompt text tokens, excluding BOS and image tokens",
    )
    if decode and per_page_lengths:
        _add_per_page_lengths(g)
    elif decode:
        g.add_argument(
            "--decode-tokens", type=int, default=DEFAULT_DECODE_TOKENS, help="single-token decode steps after prefill"
        )
    if decode:
        g.add_argument(
            "--lm-head", choices=LM_HEAD_SCOPES, help="prefill lm_head scope (default: the implementation's own)"
        )
        g.add_argument(
            "--attn-impl",
            choices=ATTN_IMPLS,
            help="decoder attention (default: the implementation's own: eager; paged for vllm)",
        )
    g.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=DEFAULT_DTYPE,
        help="auto: bfloat16 where the device runs it natively, else float32 (counts never depend on it)",
    )
    return g


def _add_per_page_lengths(g: argparse._ArgumentGroup) -> None:
    """--decode-tokens N|from-reference or --decode-tokens-file PATH (one of them), and --tokenizer."""
    lengths = g.add_mutually_exclusive_group()
    lengths.add_argument(
        "--decode-tokens",
        type=decode_tokens_arg,
        default=DEFAULT_DECODE_TOKENS,
        metavar=f"{{N,{FROM_REFERENCE}}}",
        help=f"single-token decode steps after prefill: N on every page, or {FROM_REFERENCE} (OmniDocBench: the "
        "page's reference text counted; embedded pages: the typical length of their document type)",
    )
    lengths.add_argument(
        "--decode-tokens-file",
        type=user_path,
        metavar="PATH",
        help="decode steps per page: a JSON object or a CSV/TSV of page id -> decode tokens",
    )
    g.add_argument(
        "--tokenizer",
        type=user_path,
        metavar="PATH",
        help=f"a tokenizers JSON counting the reference text for --decode-tokens {FROM_REFERENCE} "
        f"(default: {TENTHS_PER_OTHER_CHAR / 10} tokens per character, {TENTHS_PER_CJK_CHAR / 10} per CJK one)",
    )


def workload_kwargs(args: argparse.Namespace, *, dtype: str) -> dict[str, Any]:
    """`VisionWorkload.from_page` keyword arguments from the shared options (``dtype`` already resolved)."""
    return {
        "base_size": args.base_size,
        "image_size": args.image_size,
        "crop_mode": args.crop_mode,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": getattr(args, "decode_tokens", 0),
        "lm_head_scope": getattr(args, "lm_head", None),
        "attn_impl": getattr(args, "attn_impl", None),  # None: the implementation profile's own
        "dtype": dtype,
        "model": getattr(args, "model", DEFAULT_FAMILY),
    }
