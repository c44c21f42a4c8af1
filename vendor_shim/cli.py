"""`python -m vendor_shim` / `dsocr-measure`: count one page's workload on a vendor backend.

Exit codes: 0 ok (complete count), 1 the count is incomplete (an executed op has no
formula), 2 bad input / usage / unavailable device, 3 the vendor run itself failed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from analytic.options import HelpFormatter, add_workload_options, model_without_backend, user_path, workload_kwargs
from analytic.schema import LM_PARTS, VISION_BRANCHES, VISION_STAGES
from analytic.workload import VisionWorkload, WorkloadError, check_positions
from vendor_shim.backends import REGISTRY, impl_of
from vendor_shim.backends.base import resolve_vision_device
from vendor_shim.errors import VendorShimError
from vendor_shim.options import add_vendor_options, snapshot_options_misused

EXIT_OK, EXIT_INCOMPLETE, EXIT_INPUT, EXIT_VENDOR = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors are exit 2, one line
        self.exit(EXIT_INPUT, f"dsocr-measure: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dsocr-measure",
        description="Run a DeepSeek-OCR implementation on one page under a complete FLOP counter.",
        epilog="Exit codes: 0 complete count, 1 incomplete count, 2 bad input/usage, 3 vendor run failed.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("page")
    g.add_argument("--width", type=int, help="page width in pixels")
    g.add_argument("--height", type=int, help="page height in pixels")
    g.add_argument("--image", type=user_path, help="page image; its size is used when --width/--height are absent")
    add_workload_options(p)
    g = add_vendor_options(p)
    g.add_argument("--vision-only", action="store_true", help="count the vision stack only")
    g = p.add_argument_group("output")
    g.add_argument("--no-fvcore", action="store_true", help="skip the secondary fvcore count")
    g.add_argument("--json", action="store_true", help="print the trace as JSON")
    g.add_argument("--out", type=user_path, help="also write the trace JSON to this file")
    return p


def _refuse_options_that_do_not_apply(args: argparse.Namespace) -> None:
    misuse = model_without_backend(args) or snapshot_options_misused(args)
    if misuse:
        raise WorkloadError(misuse)


def _page_size(args: argparse.Namespace) -> tuple[int, int]:
    if args.width is not None and args.height is not None:
        return args.width, args.height
    if args.image:
        try:
            from PIL import Image, ImageOps

            with Image.open(args.image) as im:
                im = ImageOps.exif_transpose(im)
                return im.size
        except (OSError, ValueError) as exc:
            raise WorkloadError(f"cannot read image {args.image!r} ({exc}): pass a readable image file") from exc
    raise WorkloadError("page size missing: pass --width and --height, or --image")


def workload_from_args(args: argparse.Namespace) -> VisionWorkload:
    """The workload the flags describe, refused when it would not fit the decoder's positions."""
    from analytic.model import build_cost_model
    from vendor_shim.env import resolve_dtype

    _refuse_options_that_do_not_apply(args)
    width, height = _page_size(args)
    args.dtype_choice = resolve_dtype(args.dtype, args.device)
    kwargs = workload_kwargs(args, dtype=args.dtype_choice.dtype)
    if args.vision_only:
        kwargs["decode_tokens"] = 0
    workload = VisionWorkload.from_page(width, height, args.mode, impl=impl_of(args.backend), **kwargs)
    limit = build_cost_model([]).decoder.max_position_embeddings  # the one statement of the limit
    check_positions(limit, workload.n_image_tokens, workload.prompt_tokens, workload.decode_tokens)
    return workload


def _print_table(trace: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"vendor FLOPs ({trace.backend}, {trace.device}, {trace.dtype})")
    for col in ("stage", "part", "tensor_flops", "GFLOP", "calls"):
        t.add_column(col, justify="right" if col != "stage" and col != "part" else "left")
    rows = [(s, b) for s in VISION_STAGES for b in VISION_BRANCHES]
    if not trace.vision_only:
        rows += [(s, p) for s in ("prefill", "decode") for p in LM_PARTS]
    for s, part in rows:
        leaf = trace.stages[s][part]
        t.add_row(s, part, f"{leaf['tensor_flops']:,}", f"{leaf['tensor_flops'] / 1e9:,.2f}", str(leaf["calls"]))
    t.add_row("total", "", f"{trace.totals['counter_total']:,}", f"{trace.totals['counter_total'] / 1e9:,.2f}", "")
    con = Console()
    con.print(t)
    verdict = "complete" if trace.complete else "INCOMPLETE: " + ", ".join(trace.coverage["uncounted_ops"])
    rss = trace.memory["peak_rss_bytes"] / 2**30
    con.print(f"count {verdict}; wall {trace.timing['wall_s']:.1f}s; peak RSS {rss:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workload = workload_from_args(args)
    except WorkloadError as exc:
        print(f"dsocr-measure: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    from vendor_shim.measure import measure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            trace = measure(
                workload,
                backend=args.backend,
                device=args.device,
                vision_only=args.vision_only,
                vendor_dir=args.vendor_dir,
                trust_remote_code=args.trust_remote_code,
                fvcore=not args.no_fvcore,
                vision_device=resolve_vision_device(
                    args.vision_device,
                    device=args.device,
                    splits_vision=REGISTRY.spec(args.backend).splits_vision,
                    vision_only=args.vision_only,
                ),
                execution=args.execution,
                dtype_reason=args.dtype_choice.reason,
            )
    except VendorShimError as exc:
        print(f"dsocr-measure: error: {exc}", file=sys.stderr)
        return exc.exit_code
    text = trace.to_json()
    if args.out:
        from pathlib import Path

        tmp = Path(args.out).with_suffix(".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(args.out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            print(
                f"dsocr-measure: error: cannot write --out {args.out} ({exc.strerror}): pick a writable path",
                file=sys.stderr,
            )
            return EXIT_INPUT
    if args.json:
        print(text)
    else:
        _print_table(trace)
    if not trace.complete:
        print("dsocr-measure: INCOMPLETE count: " + "; ".join(trace.incomplete_reasons), file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
