"""`dsocr-diff A B`: what changed between two runs or two traces (library versions, device, dtype, backend).

Exit codes: 0 no gated metric differs; 1 a gated metric differs, a page has no counterpart or no trace, or the
counter's coverage changed; 2 bad input or usage (one line naming the fix, nothing written).
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape

from core.exits import Verdict, parse_args, run_console
from core.options import HelpFormatter, UsageParser, user_path
from drift.compare import diff_sides
from drift.load import DiffInputError, load_side

EXIT_SAME, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="dsocr-diff",
        description="Compare two runs (run folder or report.json) or two vendor traces (dsocr-measure --json): "
        "per page x stage x part x metric, the aten ops that appeared, disappeared or changed, and the environment.",
        epilog="Exit codes: 0 no gated metric differs, 1 something differs, 2 bad input/usage.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("a", metavar="A", help="the reference: run folder, report.json or trace JSON")
    p.add_argument("b", metavar="B", help="the candidate, same kinds as A")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the JSON document instead of tables")
    fmt.add_argument("--markdown", action="store_true", help="print the markdown report instead of tables")
    fmt.add_argument("--quiet", action="store_true", help="print only the verdict line")
    p.add_argument("--out", type=user_path, metavar="DIR", help="also write DIR/diff.md and DIR/diff.json (atomically)")
    p.add_argument("--max-rows", type=int, default=30, metavar="N", help="rows per console table")
    return p


def main(argv: list[str] | None = None) -> int:
    """`dsocr-diff`: its exit code (`core.exits.run_console`)."""
    return run_console("dsocr-diff", lambda verdict: _main(argv, verdict))


def _main(argv: list[str] | None, verdict: Verdict) -> int:
    args = parse_args(build_parser(), argv, verdict)
    err = Console(stderr=True, soft_wrap=True)
    if args.max_rows < 1:
        return _fail(err, verdict, f"--max-rows {args.max_rows}: give a positive number")
    try:
        d = diff_sides(load_side(args.a, "A"), load_side(args.b, "B"))
    except DiffInputError as exc:
        return _fail(err, verdict, str(exc))
    from drift.render import diff_document, print_diff, render_markdown, write_diff
    from drift.summary import headline, verdict_word

    if args.out is not None:
        try:
            write_diff(d, args.out)
        except OSError as exc:
            return _fail(err, verdict, f"cannot write {args.out} ({exc.strerror or exc}): pick a writable --out")
    verdict.decide(d.exit_code)  # before any output: a broken stdout cannot change it
    if args.json:
        import json

        print(json.dumps(diff_document(d), indent=1, allow_nan=False))
    elif args.markdown:
        print(render_markdown(d), end="")
    elif args.quiet:
        print(f"{verdict_word(d)}: {headline(d)}")
    else:
        print_diff(d, Console(soft_wrap=True), max_rows=args.max_rows)
        if args.out is not None:
            Console().print(f"[dim]diff: {escape(str(args.out))}[/]", highlight=False)
    return d.exit_code


def _fail(err: Console, verdict: Verdict, message: str) -> int:
    """Decide exit 2, then `dsocr-diff: error: MESSAGE` as one line on stderr."""
    verdict.decide(EXIT_USAGE)
    err.print(f"dsocr-diff: error: {escape(message)}", highlight=False)
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
