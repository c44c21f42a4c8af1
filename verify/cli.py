"""`run_verify_end2end` and `run_verify_end2end_vision`: the product users run.

Exit codes: 0 every stage within tolerance; 1 a discrepancy (or an incomplete
count); 2 bad input or usage; 3 the vendor run itself failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from analytic.dtype_policy import DEFAULT_DTYPE, DTYPE_CHOICES
from analytic.workload import MODES, WorkloadError
from vendor_shim.backends import REGISTRY
from vendor_shim.backends.base import (
    DEVICES,
    EXECUTION_CHOICES,
    VISION_DEVICE_CHOICES,
    resolve_execution,
    resolve_vision_device,
)
from vendor_shim.errors import VendorInputError
from verify.cache import default_cache_root
from verify.compare import DEFAULT_TOLERANCE, ToleranceError, parse_tolerances
from verify.model import PageResult, PageSpec
from verify.runner import VendorFailure, Verifier, VerifyConfig, exit_code, run_pages
from verify.selection import select_pages

EXIT_OK, EXIT_DISCREPANCY, EXIT_USAGE, EXIT_VENDOR = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input or usage: one line, exit 2, no report."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is already 2; keep one line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str, vision_only: bool) -> argparse.ArgumentParser:
    what = "vision stack (SAM, CLIP, projector)" if vision_only else "vision stack, prefill and decode"
    p = _Parser(
        prog=prog,
        description=f"Verify the analytic DeepSeek-OCR cost model against the real model code: {what}.",
        epilog="Exit codes: 0 pass, 1 discrepancy, 2 bad input/usage, 3 vendor run failed.",
    )
    g = p.add_argument_group("mode")
    g.add_argument("--mode", choices=sorted(MODES), default="gundam", help="resolution preset (default: gundam)")
    g.add_argument("--base-size", type=int, help="override the preset's base_size (global view)")
    g.add_argument("--image-size", type=int, help="override the preset's image_size")
    g.add_argument("--crop-mode", action=argparse.BooleanOptionalAction, default=None, help="override crop mode")

    g = p.add_argument_group("pages (default: the embedded synthetic set)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--embedded", action="store_true", help="the embedded synthetic page set (default)")
    src.add_argument(
        "--omnidocbench", type=Path, metavar="ROOT", help="OmniDocBench root (OmniDocBench.json + images/)"
    )
    src.add_argument("--images", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    g.add_argument("--images-dir", type=Path, help="OmniDocBench image folder if not ROOT/images")
    g.add_argument("--data-source", action="append", default=[], help="OmniDocBench data_source filter (repeatable)")
    g.add_argument("--limit", type=int, help="at most N pages")
    g.add_argument("--sample", type=int, help="seeded random sample of N pages")
    g.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")

    g = p.add_argument_group("workload")
    g.add_argument("--prompt-tokens", type=int, default=12, help="prompt text tokens, excl. BOS and image (default 12)")
    if not vision_only:
        g.add_argument("--decode-tokens", type=int, default=16, help="decode steps after prefill (default 16)")
        g.add_argument("--lm-head", choices=["all", "last"], help="lm_head scope in prefill (default: backend's own)")
        g.add_argument("--attn-impl", choices=["eager", "sdpa"], default="eager", help="decoder attention (hf backend)")
    g.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=DEFAULT_DTYPE,
        help="auto (default): bfloat16 where the device runs it natively, else float32 (counts never depend on it)",
    )

    g = p.add_argument_group("vendor")
    g.add_argument(
        "--backend",
        choices=REGISTRY.names(),
        default=REGISTRY.default,
        help="implementation to measure: " + "; ".join(f"{b.name}: {b.summary}" for b in REGISTRY),
    )
    g.add_argument("--vendor-dir", type=Path, help="local DeepSeek-OCR snapshot (remote-code backend)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow executing the snapshot's code")
    g.add_argument("--device", choices=DEVICES, default="cpu" if not vision_only else "meta")
    if not vision_only:
        g.add_argument(
            "--vision-device",
            choices=VISION_DEVICE_CHOICES,
            default="auto",
            help="where the vision stack is counted: meta = shapes only (identical counts, tested), same = on "
            "--device; auto (default) = meta when --device is cpu, else same",
        )
    g.add_argument(
        "--execution",
        choices=EXECUTION_CHOICES,
        default="auto",
        help="shapes: counted ops return zeros of the right shape without arithmetic (same ops, same counts, "
        "balanced MoE routing); real: do the arithmetic (the reference); auto (default): real on cuda, else shapes",
    )
    g.add_argument("--no-cache", action="store_true", help="always run the vendor (do not read or write the cache)")
    g.add_argument(
        "--cache-dir",
        type=Path,
        help="trace cache (default: $DSOCR_CACHE_DIR/traces)",
    )

    g = p.add_argument_group("gate and output")
    g.add_argument("--output-dir", type=Path, default=Path("runs"), help="reports go to OUTPUT_DIR/<run id>/")
    g.add_argument("--tolerance-default", type=float, default=DEFAULT_TOLERANCE, help="relative, default 0.01")
    g.add_argument("--tolerance", action="append", default=[], metavar="STAGE=FRAC", help="per-stage tolerance")
    g.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="Hydra override (analytic)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace, command: str, vision_only: bool) -> VerifyConfig:
    try:
        tolerances = parse_tolerances(args.tolerance_default, args.tolerance)
    except ToleranceError as exc:
        raise UsageError(str(exc)) from None
    if REGISTRY.spec(args.backend).needs_vendor_dir:
        if args.vendor_dir is None:
            raise UsageError(f"--backend {args.backend} needs --vendor-dir PATH (a local DeepSeek-OCR snapshot)")
        if not args.vendor_dir.is_dir():
            raise UsageError(f"vendor dir {args.vendor_dir} does not exist: point --vendor-dir at a snapshot folder")
        if not args.trust_remote_code:
            raise UsageError(
                f"{args.backend} executes the snapshot's Python files: add --trust-remote-code to allow it"
            )
    if args.device == "meta" and not vision_only:
        raise UsageError("--device meta cannot run the decoder (MoE routing needs data): use cpu or cuda")
    for name in ("prompt_tokens", "decode_tokens", "limit", "sample"):
        val = getattr(args, name, None)
        if val is not None and val < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    from vendor_shim.env import resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    return VerifyConfig(
        command=command,
        mode=args.mode,
        base_size=args.base_size,
        image_size=args.image_size,
        crop_mode=args.crop_mode,
        prompt_tokens=args.prompt_tokens,
        decode_tokens=0 if vision_only else args.decode_tokens,
        vision_only=vision_only,
        backend=args.backend,
        vendor_dir=str(args.vendor_dir) if args.vendor_dir else None,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        vision_device=resolve_vision_device(
            "same" if vision_only else args.vision_device,
            device=args.device,
            splits_vision=REGISTRY.spec(args.backend).splits_vision,
            vision_only=vision_only,
        ),
        dtype=dtype.dtype,
        dtype_choice=dtype.to_dict(),
        execution=resolve_execution(args.execution, args.device),
        lm_head=None if vision_only else args.lm_head,
        attn_impl="eager" if vision_only else args.attn_impl,
        tolerances=tolerances,
        analytic_overrides=list(args.override),
        use_cache=not args.no_cache,
        cache_dir=str(args.cache_dir or default_cache_root()),
    )


def load_pages(args: argparse.Namespace) -> list[PageSpec]:
    from verify import pages as P

    try:
        if args.omnidocbench is not None:
            found = P.load_omnidocbench(
                args.omnidocbench, data_sources=args.data_source or None, images_dir=args.images_dir
            )
        elif args.images:
            found = P.load_image_files(args.images)
        else:
            found = P.load_embedded()
    except P.PageSourceError as exc:
        raise UsageError(str(exc)) from None
    return select_pages(found, limit=args.limit, sample=args.sample, seed=args.seed)


def make_verifier(cfg: VerifyConfig) -> tuple[Verifier, dict[str, Any]]:
    from analytic.model import build_cost_model
    from verify.vendor_measure import VendorMeasurer

    try:
        cost_model = build_cost_model(cfg.analytic_overrides)
    except Exception as exc:
        raise UsageError(f"analytic config override failed: {exc}") from None
    measurer = VendorMeasurer.create(cfg)
    return Verifier(cfg=cfg, measure=measurer, cost_model=cost_model), measurer.environment()


def _main(argv: list[str] | None, command: str, vision_only: bool) -> int:
    console = Console(stderr=True, soft_wrap=True)  # errors stay one line, whatever the terminal width
    args = build_parser(command, vision_only).parse_args(argv)
    try:
        cfg = config_from_args(args, command, vision_only)
        pages = load_pages(args)
        if not pages:
            raise UsageError("no pages selected: check the page source and the --data-source/--limit filters")
        verifier, environment = make_verifier(cfg)
        _check_output_dir(Path(args.output_dir))
    except (UsageError, WorkloadError, VendorInputError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_USAGE
    except VendorFailure as exc:
        console.print(f"[bold red]vendor failed:[/] {exc}", highlight=False)
        return EXIT_VENDOR

    run = _run_with_progress(verifier, pages, environment, console, quiet=args.quiet)
    if all(p.error_kind == "input" for p in run.pages):
        for p in run.pages:
            console.print(f"[bold red]error:[/] {p.page.page_id}: {p.error}", highlight=False)
        return EXIT_USAGE

    from reports.console import print_summary

    try:
        paths = _write_fresh(run, Path(args.output_dir))
    except OSError as exc:
        console.print(f"[bold red]error:[/] cannot write the reports ({exc}): pick another --output-dir")
        return EXIT_USAGE
    print_summary(run, Console(), paths)
    return exit_code(run)


def _check_output_dir(output_dir: Path) -> None:
    """Fail before the run, not after it, when the reports could not be written (nothing is created here)."""
    probe = output_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {output_dir} cannot be created under {probe}: pick a writable folder")


def _write_fresh(run, output_dir: Path) -> dict[str, Path]:
    """Reports into OUTPUT_DIR/<run id>, suffixed -2, -3, ... when a run started in the same second is there."""
    from reports import ReportExistsError, write_reports

    base = run.run_id
    for n in range(1, 1000):
        run.run_id = base if n == 1 else f"{base}-{n}"
        try:
            return write_reports(run, output_dir / run.run_id)
        except ReportExistsError:
            continue
    raise ReportExistsError(f"{output_dir} holds 999 runs named {base}*: pick another --output-dir")


def _run_with_progress(verifier: Verifier, pages: list[PageSpec], env: dict, console: Console, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return run_pages(verifier, pages, env)
    if not console.is_terminal:  # CI logs, nohup: one plain line per page instead of a bar nobody sees
        return run_pages(verifier, pages, env, on_page=_page_logger(console, len(pages)))
    columns = (
        TextColumn("[bold]verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=len(pages))

        def on_page(res: PageResult) -> None:
            mark = "[green]ok[/]" if res.passed else "[red]FAIL[/]"
            progress.update(task, advance=1, description=f"{res.page.page_id} {mark}")

        return run_pages(verifier, pages, env, on_page=on_page)


def _page_logger(console: Console, total: int):
    """on_page callback printing '[i/N] page: verdict, grid, cache hit or not, seconds since the last page'."""
    import time

    state = {"done": 0, "t": time.perf_counter()}

    def on_page(res: PageResult) -> None:
        now = time.perf_counter()
        state["done"] += 1
        wl = res.workload or {}
        grid = f"grid {wl.get('w_crop', '?')}x{wl.get('h_crop', '?')}" if wl else "no workload"
        verdict = "ok" if res.passed else f"FAIL ({res.error_kind})" if res.error else "FAIL"
        cache = "cache hit" if res.cache_hit else "measured"
        console.print(
            f"[{state['done']}/{total}] {res.page.page_id}: {verdict}, {grid}, {cache}, {now - state['t']:.1f} s",
            highlight=False,
            markup=False,
        )
        state["t"] = now

    return on_page


def main_end2end(argv: list[str] | None = None) -> int:
    return _main(argv, "run_verify_end2end", vision_only=False)


def main_vision(argv: list[str] | None = None) -> int:
    return _main(argv, "run_verify_end2end_vision", vision_only=True)


if __name__ == "__main__":
    sys.exit(main_end2end())
