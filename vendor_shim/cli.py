"""`python -m vendor_shim` / `dsocr-measure`: count one page's workload on a vendor backend.

Exit codes: 0 ok (complete count), 1 the count is incomplete (an executed op has no
formula), 2 bad input / usage / unavailable device, 3 the vendor run itself failed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from core.exits import Verdict, parse_args, run_console
from core.families import DEFAULT_FAMILY, family
from core.options import HelpFormatter, add_workload_options, user_path, workload_kwargs
from core.published import max_positions
from core.schema import LM_PARTS, VISION_BRANCHES, family_vision_stages
from core.workload import VisionWorkload, WorkloadError, check_positions
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
    spec = REGISTRY.spec(args.backend)
    misuse = (
        spec.family_refusal(args.model)
        or snapshot_options_misused(args)
        or spec.page_refusal(
            vision_only=args.vision_only,
            mode=args.mode,
            sizes_overridden=any(v is not None for v in (args.base_size, args.image_size, args.crop_mode)),
        )
    )
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
    from vendor_shim.env import resolve_dtype

    _refuse_options_that_do_not_apply(args)
    width, height = _page_size(args)
    args.dtype_choice = resolve_dtype(args.dtype, args.device)
    kwargs = workload_kwargs(args, dtype=args.dtype_choice.dtype)
    if args.vision_only:
        kwargs["decode_tokens"] = 0
    workload = VisionWorkload.from_page(width, height, args.mode, impl=impl_of(args.backend), **kwargs)
    limit = max_positions(family(workload.model).decoder)  # the published decoder the backends build
    check_positions(limit, workload.n_image_tokens, workload.prompt_tokens, workload.decode_tokens)
    return workload


def _print_table(trace: Any) -> None:
    """Two 80-column tables (work, bytes) over the stage leaves, totals, then residency and the verdict."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from core.metrics import BYTE_METRICS, combine
    from reports.format import format_bytes, format_metric

    rows = [(s, b) for s in family_vision_stages(trace.workload.get("model", DEFAULT_FAMILY)) for b in VISION_BRANCHES]
    if not trace.vision_only:
        rows += [(s, p) for s in ("prefill", "decode") for p in LM_PARTS]
    con = Console()
    where = f"{trace.backend}, {trace.device}, {trace.dtype}"
    groups = (
        (f"vendor work ({where})", ("tensor_flops", "elementwise_flops"), True),
        ("vendor bytes (peak: high-water mark above the stage's entry)", BYTE_METRICS, False),
    )
    for title, metrics, calls in groups:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
        t.add_column("stage", no_wrap=True, min_width=16)
        for m in metrics:
            t.add_column(m.removesuffix("_bytes").removesuffix("_cache"), justify="right", no_wrap=True, min_width=10)
        if calls:
            t.add_column("calls", justify="right")
        for s, part in rows:
            leaf = trace.stages[s][part]
            cells = [format_metric(m, leaf[m], 2) for m in metrics]
            t.add_row(f"{s}/{part}", *cells, *([str(leaf["calls"])] if calls else []))
        totals = [format_metric(m, combine(m, [trace.stages[s][p][m] for s, p in rows]), 2) for m in metrics]
        t.add_row("total", *totals, *([""] if calls else []), style="bold")
        con.print(t)
    mem = trace.memory
    kv = mem.get("kv_cache_resident_bytes") or []
    resident = f"weights resident {format_bytes(mem.get('weight_resident_bytes'), 2)}"
    if kv:
        resident += (
            f"; KV cache after the prefill {format_bytes(kv[0], 2)}, after the last step {format_bytes(kv[-1], 2)}"
        )
    con.print(resident)
    verdict = "complete" if trace.complete else "INCOMPLETE: " + ", ".join(trace.coverage["uncounted_ops"])
    rss = mem["peak_rss_bytes"] / 2**30
    con.print(f"count {verdict}; wall {trace.timing['wall_s']:.1f}s; peak RSS {rss:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    """`dsocr-measure`: its exit code (`core.exits.run_console`)."""
    return run_console("dsocr-measure", lambda verdict: _main(argv, verdict))


def _main(argv: list[str] | None, verdict: Verdict) -> int:
    args = parse_args(build_parser(), argv, verdict)
    try:
        workload = workload_from_args(args)
        _check_out(args.out)  # before the measurement, not after it
    except WorkloadError as exc:
        return _fail(verdict, EXIT_INPUT, str(exc))
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
                decoder_layers=args.decoder_layers,
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
        return _fail(verdict, exc.exit_code, str(exc))
    except SystemExit as exc:  # the vendor's code called sys.exit(): a failed run, never a verdict
        return _fail(verdict, EXIT_VENDOR, f"the vendor run failed (it raised {exc!r})")
    text = trace.to_json()
    if args.out:
        from reports.files import atomic_write_text

        try:
            atomic_write_text(args.out, text)
        except OSError as exc:
            return _fail(
                verdict, EXIT_INPUT, f"cannot write --out {args.out} ({exc.strerror or exc}): pick a writable path"
            )
    code = verdict.decide(EXIT_OK if trace.complete else EXIT_INCOMPLETE)  # before any output
    if args.json:
        print(text)
    else:
        _print_table(trace)
    if not trace.complete:
        print("dsocr-measure: INCOMPLETE count: " + "; ".join(trace.incomplete_reasons), file=sys.stderr)
    return code


def _check_out(out: Path | None) -> None:
    """`--out` must name a file in a folder that can take it (WorkloadError, exit 2)."""
    if out is None:
        return
    from reports.files import unwritable_folder

    if out.is_dir():
        raise WorkloadError(f"--out {out} is a folder: name a file, e.g. {out / 'trace.json'}")
    problem = unwritable_folder(out.parent)
    if problem:
        raise WorkloadError(f"--out {out} cannot be written ({problem}): pick a writable path")


def _fail(verdict: Verdict, code: int, message: str) -> int:
    """Decide `code`, then one line on stderr."""
    verdict.decide(code)
    print(f"dsocr-measure: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
