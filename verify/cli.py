"""`run_verify_end2end` and `run_verify_end2end_vision`: the product users run.

Exit codes: 0 every stage within tolerance; 1 a discrepancy (or an incomplete
count); 2 bad input or usage; 3 the vendor run itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from core.decode_lengths import FROM_REFERENCE
from core.exits import Verdict, parse_args, run_console
from core.options import HelpFormatter, UsageParser, add_workload_options, user_path
from core.schema import family_stages, family_vision_stages
from core.workload import WorkloadError, check_positions, max_image_tokens, resolve_mode
from reports.model import PageResult, PageSpec
from reports.safe import printable
from vendor_shim.backends import REGISTRY
from vendor_shim.backends.base import resolve_vision_device
from vendor_shim.errors import InfrastructureError, VendorInputError
from vendor_shim.options import add_vendor_options, depth_overrides, snapshot_options_misused
from vendor_shim.remote_code.snapshot import check_vendor_dir
from verify.cache import default_cache_root, keep_matplotlib_in_cache
from verify.compare import DEFAULT_TOLERANCE, ToleranceError, parse_tolerances
from verify.lengths import FILE, FIXED, DecodeLengths, assign_decode_lengths
from verify.runner import VendorFailure, Verifier, VerifyConfig, build_workload, exit_code, run_pages
from verify.selection import select_pages
from verify.step_workers import MAX_JOBS, default_jobs

EXIT_USAGE, EXIT_VENDOR = 2, 3  # a finished run's code (0 pass, 1 discrepancy) is `reports.model.outcome`'s
MAX_PAGES = 10_000_000  # --limit / --sample
MAX_SEED = 2**32 - 1


class UsageError(Exception):
    """Bad input or usage: one line, exit 2, no report."""


def build_parser(prog: str, vision_only: bool) -> argparse.ArgumentParser:
    what = "vision stack (SAM, CLIP, projector)" if vision_only else "vision stack, prefill and decode"
    p = UsageParser(
        prog=prog,
        description=f"Verify the analytic DeepSeek-OCR cost model against the real model code: {what}.",
        epilog="Exit codes: 0 pass, 1 discrepancy, 2 bad input/usage, 3 vendor run failed.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("pages (default: the embedded synthetic set)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--embedded", action="store_true", help="the embedded synthetic page set (default)")
    src.add_argument(
        "--omnidocbench",
        type=user_path,
        metavar="ROOT",
        help="OmniDocBench root (OmniDocBench.json + images/), or the annotation JSON itself (images/ beside it)",
    )
    src.add_argument("--images", type=user_path, nargs="+", metavar="PATH", help="image files or folders")
    g.add_argument("--images-dir", type=user_path, help="OmniDocBench image folder if not ROOT/images")
    g.add_argument("--data-source", action="append", default=[], help="OmniDocBench data_source filter (repeatable)")
    g.add_argument("--limit", type=int, help=f"at most N pages (0..{MAX_PAGES:,})")
    g.add_argument("--sample", type=int, help=f"seeded random sample of N pages (0..{MAX_PAGES:,})")
    g.add_argument("--seed", type=int, help=f"seed for --sample (0 when not given; 0..{MAX_SEED})")

    add_workload_options(p, decode=not vision_only, per_page_lengths=True)
    g = add_vendor_options(p, default_device="meta" if vision_only else "cpu", vision_split=not vision_only)
    g.add_argument("--no-cache", action="store_true", help="always run the vendor (do not read or write the cache)")
    g.add_argument(
        "--cache-dir",
        type=user_path,
        help="trace cache (default: $DSOCR_CACHE_DIR/traces); decode steps go to its decode-steps/ folder",
    )
    if not vision_only:
        g.add_argument(
            "--per-page-steps",
            action="store_true",
            help="run every page's decode steps in its own run (default: a decode step is measured once per "
            "signature and key count and shared by the pages that reach it; hf backend, shapes execution)",
        )
        g.add_argument(
            "--jobs",
            type=int,
            default=default_jobs(),
            metavar="N",
            help="processes measuring the decode steps a run lacks side by side (each holds its own model, "
            "up to 2 GiB; default: as many as this machine's processors and available memory allow)",
        )

    g = p.add_argument_group("gate and output")
    g.add_argument("--output-dir", type=user_path, default=Path("runs"), help="reports go to OUTPUT_DIR/<run id>/")
    g.add_argument("--tolerance-default", type=float, default=DEFAULT_TOLERANCE, help="relative tolerance")
    g.add_argument("--tolerance", action="append", default=[], metavar="STAGE=FRAC", help="per-stage tolerance")
    g.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="Hydra override (analytic)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace, command: str, vision_only: bool) -> VerifyConfig:
    try:
        stages = family_vision_stages(args.model) if vision_only else family_stages(args.model)
        tolerances = parse_tolerances(args.tolerance_default, args.tolerance, stages)
    except ToleranceError as exc:
        raise UsageError(str(exc)) from None
    _refuse_options_that_do_not_apply(args, vision_only)
    no_backend = REGISTRY.spec(args.backend).family_refusal(args.model) or REGISTRY.spec(args.backend).page_refusal(
        vision_only=vision_only,
        mode=args.mode,
        sizes_overridden=any(v is not None for v in (args.base_size, args.image_size, args.crop_mode)),
    )
    if no_backend:
        raise UsageError(no_backend)
    if REGISTRY.spec(args.backend).needs_vendor_dir:
        if args.vendor_dir is None:
            raise UsageError(f"--backend {args.backend} needs --vendor-dir PATH (a local DeepSeek-OCR snapshot)")
        check_vendor_dir(args.vendor_dir)
        if not args.trust_remote_code:
            raise UsageError(
                f"{args.backend} executes the snapshot's Python files: add --trust-remote-code to allow it"
            )
    if args.device == "meta" and not vision_only:
        raise UsageError("--device meta cannot run the decoder (MoE routing needs data): use cpu or cuda")
    for name in ("prompt_tokens", "decode_tokens", "limit", "sample"):
        val = getattr(args, name, None)
        if isinstance(val, int) and val < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    _check_bounds(args)
    resolve_mode(args.mode, args.base_size, args.image_size, args.crop_mode, args.model)  # exit 2, up front
    from vendor_shim.env import resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    lengths = decode_lengths_of(args, vision_only)
    return VerifyConfig(
        command=command,
        model=args.model,
        mode=args.mode,
        base_size=args.base_size,
        image_size=args.image_size,
        crop_mode=args.crop_mode,
        prompt_tokens=args.prompt_tokens,
        decode_tokens=0 if vision_only else (args.decode_tokens if lengths.rule == FIXED else None),
        decode_lengths=lengths.rule,
        decode_tokens_file=str(lengths.file) if lengths.file else None,
        tokenizer=str(lengths.tokenizer) if lengths.tokenizer else None,
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
        execution=_execution(args),
        lm_head=None if vision_only else args.lm_head,
        attn_impl="eager" if vision_only else args.attn_impl,
        decoder_layers=args.decoder_layers,
        tolerances=tolerances,
        analytic_overrides=[*args.override, *depth_overrides(args.decoder_layers)],
        use_cache=not args.no_cache,
        cache_dir=str(args.cache_dir or default_cache_root()),
        share_steps=not getattr(args, "per_page_steps", False),
        jobs=getattr(args, "jobs", None) or 1,
    )


def decode_lengths_of(args: argparse.Namespace, vision_only: bool) -> DecodeLengths:
    """The run's decode-length rule from --decode-tokens / --decode-tokens-file / --tokenizer (verify.lengths)."""
    if vision_only:
        return DecodeLengths()
    if args.decode_tokens_file is not None:
        return DecodeLengths(FILE, file=args.decode_tokens_file)
    if args.decode_tokens == FROM_REFERENCE:
        return DecodeLengths(FROM_REFERENCE, tokenizer=args.tokenizer)
    return DecodeLengths()


def _refuse_length_options_that_do_not_apply(args: argparse.Namespace) -> None:
    """--tokenizer counts OmniDocBench reference text for from-reference only; --images pages have no reference
    text and no document type, so from-reference cannot size them."""
    from_reference = args.decode_tokens == FROM_REFERENCE and args.decode_tokens_file is None
    if args.tokenizer is not None and not from_reference:
        raise UsageError(f"--tokenizer applies only to --decode-tokens {FROM_REFERENCE}: drop it or add that")
    if args.tokenizer is not None and args.omnidocbench is None:
        raise UsageError(
            "--tokenizer counts OmniDocBench reference text; these pages have none: drop it or add --omnidocbench"
        )
    if from_reference and args.images:
        raise UsageError(
            f"--decode-tokens {FROM_REFERENCE} needs reference text (--omnidocbench) or a document type (the "
            "embedded set); for --images give --decode-tokens N or a --decode-tokens-file"
        )


def _refuse_options_that_do_not_apply(args: argparse.Namespace, vision_only: bool) -> None:
    """An option that would be ignored is a usage error: the user meant something else."""
    misuse = snapshot_options_misused(args)
    if misuse:
        raise UsageError(misuse)
    if args.omnidocbench is None:
        for flag, given in (("--data-source", bool(args.data_source)), ("--images-dir", args.images_dir is not None)):
            if given:
                raise UsageError(f"{flag} applies only to --omnidocbench: drop it or add --omnidocbench ROOT")
    if args.seed is not None and args.sample is None:
        raise UsageError("--seed applies only to --sample: drop it or add --sample N")
    if args.no_cache and args.cache_dir is not None:
        raise UsageError("--cache-dir has no effect with --no-cache: drop one of them")
    if not vision_only:
        _refuse_length_options_that_do_not_apply(args)
        spec = REGISTRY.spec(args.backend)
        refusal = spec.refusal(attn_impl=args.attn_impl or spec.attn_impls[0], lm_head_scope=args.lm_head)
        if refusal:
            raise UsageError(refusal)
    if args.decoder_layers is not None:
        if not REGISTRY.spec(args.backend).reduced_depth:
            deep = " or ".join(f"--backend {b.name}" for b in REGISTRY if b.reduced_depth)
            raise UsageError(f"--decoder-layers applies only to {deep}: drop it or add the backend")
        if args.decoder_layers < 1:
            raise UsageError("--decoder-layers must be >= 1")


def _execution(args: argparse.Namespace) -> str:
    """The execution the backend runs (`BackendSpec.execution`); a mode it cannot run is a usage error."""
    try:
        return REGISTRY.spec(args.backend).execution(args.execution, args.device)
    except VendorInputError as exc:
        raise UsageError(str(exc)) from None


def _check_bounds(args: argparse.Namespace) -> None:
    for name in ("limit", "sample"):
        val = getattr(args, name)
        if val is not None and val > MAX_PAGES:
            raise UsageError(f"--{name} {val} is above {MAX_PAGES:,} pages: pass a smaller number")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"--seed must be in 0..{MAX_SEED}")
    jobs = getattr(args, "jobs", None)
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs {jobs}: give 1 to {MAX_JOBS} processes")


def check_positions_fit(cfg: VerifyConfig, cost_model: Any) -> None:
    """Refuse up front when the longest page of the mode would not fit the decoder's positions."""
    _, preset = resolve_mode(cfg.mode, cfg.base_size, cfg.image_size, cfg.crop_mode, cfg.model)
    limit = cost_model.decoder.max_position_embeddings
    check_positions(limit, max_image_tokens(preset, cfg.model), cfg.prompt_tokens, cfg.decode_tokens or 0)


def decode_room(cfg: VerifyConfig, cost_model: Any) -> int:
    """The most decode steps a page may have: the decoder's positions less the mode's longest prefill (the rule
    `check_positions_fit` applies to one --decode-tokens for every page)."""
    _, preset = resolve_mode(cfg.mode, cfg.base_size, cfg.image_size, cfg.crop_mode, cfg.model)
    limit = cost_model.decoder.max_position_embeddings
    return limit - 1 - max_image_tokens(preset, cfg.model) - cfg.prompt_tokens


def load_pages(args: argparse.Namespace) -> list[PageSpec]:
    from verify import pages as P

    try:
        if args.omnidocbench is not None:
            found = P.load_omnidocbench(
                args.omnidocbench, data_sources=args.data_source or None, images_dir=args.images_dir
            )
        elif args.images:
            found = P.load_image_files(args.images, limit=args.limit, sample=args.sample, seed=args.seed or 0)
        else:
            found = P.load_embedded()
    except P.PageSourceError as exc:
        raise UsageError(str(exc)) from None
    return select_pages(found, limit=args.limit, sample=args.sample, seed=args.seed or 0)


def build_analytic(cfg: VerifyConfig) -> Any:
    """The analytic model, built and evaluated once on a small page: a bad override fails here (exit 2).

    The token counts are checked against its decoder's positions before anything is evaluated.
    """
    from analytic.model import build_cost_model

    try:
        cost_model = build_cost_model(cfg.analytic_overrides, family=cfg.model)
    except (Exception, SystemExit) as exc:
        raise _override_error(exc, cfg.analytic_overrides) from None
    check_positions_fit(cfg, cost_model)
    steps = 2 if cfg.decode_tokens is None else cfg.decode_tokens  # per-page lengths: any small number will do
    probe_page = PageSpec("override-check", 1280, 1920, source="check", decode_tokens=min(steps, 2))
    probe = build_workload(probe_page, cfg)  # crops in crop mode
    probe = dataclasses.replace(probe, prompt_tokens=min(probe.prompt_tokens, 16))
    try:
        cost_model.estimate(probe)
    except (Exception, SystemExit) as exc:  # vision.sam.patch_size=abc: the config takes it, the formulas fail
        raise _override_error(exc, cfg.analytic_overrides) from None
    return cost_model


def _lengths(cfg: VerifyConfig) -> DecodeLengths:
    """The decode-length rule the config records (the one `decode_lengths_of` chose)."""
    return DecodeLengths(
        cfg.decode_lengths,
        file=Path(cfg.decode_tokens_file) if cfg.decode_tokens_file else None,
        tokenizer=Path(cfg.tokenizer) if cfg.tokenizer else None,
    )


def _override_error(exc: BaseException, overrides: list[str]) -> UsageError:
    lines = str(exc).strip().splitlines()
    given = f" ({', '.join(overrides)})" if overrides else ""
    reason = lines[0] if lines and not isinstance(exc, SystemExit) else repr(exc)
    return UsageError(f"analytic config override failed{given}: {reason}; fix the --override value")


def _main(argv: list[str] | None, command: str, vision_only: bool, verdict: Verdict) -> int:
    console = Console(stderr=True, soft_wrap=True)  # errors stay one line, whatever the terminal width
    args = parse_args(build_parser(command, vision_only), argv, verdict)
    keep_matplotlib_in_cache()  # the report's charts: nothing written under $HOME
    try:
        cfg = config_from_args(args, command, vision_only)
        verifier = Verifier(cfg=cfg, measure=None, cost_model=build_analytic(cfg))  # the vendor comes later
        pages = assign_decode_lengths(load_pages(args), _lengths(cfg), decode_room(cfg, verifier.cost_model))
        if not pages:
            raise UsageError("no pages selected: check the page source and the --data-source/--limit filters")
        prepared = [verifier.prepare(page) for page in pages]  # every page checked before the model is built
        if all(workload is None for _, workload in prepared):
            verdict.decide(EXIT_USAGE)
            for res, _ in prepared:
                line = escape(printable(f"{res.page.page_id}: {res.error}"))
                console.print(f"[bold red]error:[/] {line}", highlight=False)
            return EXIT_USAGE
        _check_output_dir(Path(args.output_dir))
        from verify.vendor_measure import VendorMeasurer

        verifier.measure = measurer = VendorMeasurer.create(cfg)
        cfg.impl_version = measurer.impl_version  # the library release the profile variant mirrors
        prepared = verifier.at_release(prepared)
        environment = measurer.environment()
    except (UsageError, WorkloadError, VendorInputError, InfrastructureError) as exc:
        return _refuse(console, verdict, EXIT_USAGE, "error", str(exc))
    except VendorFailure as exc:
        return _refuse(console, verdict, EXIT_VENDOR, "vendor failed", str(exc))

    try:
        run = _run_with_progress(verifier, prepared, environment, console, quiet=args.quiet)
    except InfrastructureError as exc:  # e.g. the pinned environment broke: nothing was measured by it
        return _refuse(console, verdict, EXIT_USAGE, "error", str(exc))
    finally:
        measurer.close()  # the decode-step workers, if --jobs started any

    from reports.console import print_summary

    try:
        paths = _write_fresh(run, Path(args.output_dir))
    except OSError as exc:  # the disk, not the vendor: the results are still shown below
        verdict.decide(EXIT_USAGE)
        print_summary(run, Console())
        return _refuse(
            console,
            verdict,
            EXIT_USAGE,
            "error",
            f"cannot write the reports ({exc}): free space or pick another --output-dir; "
            "the summary above is this run's result",
        )
    verdict.decide(exit_code(run))  # decided before anything is printed: a broken stdout cannot change it
    print_summary(run, Console(), paths)
    return exit_code(run)


def _refuse(console: Console, verdict: Verdict, code: int, label: str, message: str) -> int:
    """Decide `code`, then print `label: message` as one line on stderr."""
    verdict.decide(code)
    console.print(f"[bold red]{label}:[/] {escape(printable(message))}", highlight=False)
    return code


def _check_output_dir(output_dir: Path) -> None:
    """Fail before the run, not after it, when the reports could not be written (nothing is created here)."""
    from reports.files import unwritable_folder

    problem = unwritable_folder(output_dir)
    if problem:
        raise UsageError(f"--output-dir {output_dir} cannot be created ({problem}): pick a writable folder")


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


def _run_with_progress(verifier: Verifier, prepared: list, env: dict, console: Console, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    pages = [res.page for res, _ in prepared]
    if quiet:
        return run_pages(verifier, pages, env, prepared=prepared)
    if not console.is_terminal:  # CI logs, nohup: one plain line per page instead of a bar nobody sees

        def note(text: str) -> None:
            console.print(text, highlight=False, markup=False)

        logger = _page_logger(console, len(pages))
        return run_pages(verifier, pages, env, on_page=logger, prepared=prepared, on_note=note)
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
            progress.update(task, advance=1, description=f"{escape(printable(res.page.page_id))} {mark}")

        def on_note(text: str) -> None:
            progress.update(task, description=escape(text))

        return run_pages(verifier, pages, env, on_page=on_page, prepared=prepared, on_note=on_note)


def _page_logger(console: Console, total: int):
    """on_page callback printing '[i/N] page: verdict, grid, cache hit or not, seconds since the last page'."""
    import time

    state = {"done": 0, "t": time.perf_counter()}

    def on_page(res: PageResult) -> None:
        now = time.perf_counter()
        state["done"] += 1
        wl = res.workload or {}
        grid = "no workload" if not wl else f"grid {wl['w_crop']}x{wl['h_crop']}" if wl.get("n_crops") else "no crops"
        verdict = "ok" if res.passed else f"FAIL ({res.error_kind})" if res.error else "FAIL"
        cache = "served from cache (same workload signature)" if res.cache_hit else "measured"
        stored = (((res.trace or {}).get("received") or {}).get("execution") or {}).get("decode_steps_from_store")
        if stored and not res.cache_hit:
            cache += f" (its {stored:,} decode steps shared by key count)"
        console.print(
            f"[{state['done']}/{total}] {printable(res.page.page_id)}: {verdict}, {grid}, {cache}, "
            f"{now - state['t']:.1f} s",
            highlight=False,
            markup=False,
        )
        state["t"] = now

    return on_page


def main_end2end(argv: list[str] | None = None) -> int:
    """`run_verify_end2end`: its exit code (`core.exits.run_console`)."""
    command = "run_verify_end2end"
    return run_console(command, lambda verdict: _main(argv, command, False, verdict))


def main_vision(argv: list[str] | None = None) -> int:
    """`run_verify_end2end_vision`: its exit code (`core.exits.run_console`)."""
    command = "run_verify_end2end_vision"
    return run_console(command, lambda verdict: _main(argv, command, True, verdict))


if __name__ == "__main__":
    sys.exit(main_end2end())
