"""`python -m analytic` / `dsocr-analytic`: the analytic cost of one page, as JSON or a table.

Exit codes: 0 ok, 2 bad input (unknown mode, non-positive sizes, inconsistent overrides, usage).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from analytic.layers.common import ConfigError
from core.dtype_policy import choose_dtype, cpuinfo_native_bf16
from core.exits import Verdict, parse_args, run_console
from core.options import HelpFormatter, UsageParser, add_workload_options, workload_kwargs
from core.profiles import ProfileError, profile_names
from core.workload import VisionWorkload, WorkloadError, check_positions


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="dsocr-analytic",
        description="Analytic FLOP/byte cost of DeepSeek-OCR (or --model deepseek-ocr-2) on one page "
        "(formulas over shapes; no torch).",
        epilog="Exit codes: 0 ok, 2 bad input or usage. Also runs as python -m analytic.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("page")
    g.add_argument("--width", type=int, required=True, help="page width in pixels")
    g.add_argument("--height", type=int, required=True, help="page height in pixels")
    add_workload_options(p)
    g = p.add_argument_group("analytic model")
    g.add_argument("--impl", choices=profile_names(), default="official", help="implementation profile to mirror")
    g.add_argument(
        "--library-version",
        metavar="X.Y.Z",
        help="the release of the profile's library to mirror (transformers for hf and official; "
        "core/releases/): default the newest verified",
    )
    g.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override of the analytic config, repeatable (e.g. decoder.num_layers=2)",
    )
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    g.add_argument("--records", action="store_true", help="include per-op records (with --json)")
    return p


def _dtype(requested: str) -> str:
    """``auto`` resolved for this host's CPU without torch (`core.dtype_policy`)."""
    native, probe = cpuinfo_native_bf16() if requested == "auto" else (False, "")
    return choose_dtype(requested, device="cpu", native_bf16=native, probe=probe).dtype


def main(argv: list[str] | None = None) -> int:
    """`dsocr-analytic`: its exit code (`core.exits.run_console`)."""
    return run_console("dsocr-analytic", lambda verdict: _main(argv, verdict))


def _main(argv: list[str] | None, verdict: Verdict) -> int:
    args = parse_args(build_parser(), argv, verdict)
    try:
        kwargs = workload_kwargs(args, dtype=_dtype(args.dtype))
        workload = VisionWorkload.from_page(
            args.width, args.height, args.mode, impl=args.impl, impl_version=args.library_version, **kwargs
        )
        from analytic.model import build_cost_model

        model = build_cost_model(args.override, family=workload.model)
        limit = model.decoder.max_position_embeddings
        check_positions(limit, workload.n_image_tokens, workload.prompt_tokens, workload.decode_tokens)
        est = model.estimate(workload, records=args.records)
    except (WorkloadError, ConfigError, ProfileError) as exc:
        verdict.decide(2)
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except (Exception, SystemExit) as exc:  # an override the config accepts but the formulas cannot use
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines and not isinstance(exc, SystemExit) else repr(exc)
        verdict.decide(2)
        print(f"error: analytic config override failed: {reason}", file=sys.stderr)
        return 2
    verdict.decide(0)  # before the output: a broken stdout cannot change it
    if args.json:
        json.dump(est.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        _print_table(est.to_dict())
    return 0


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from core.metrics import METRICS, combine
    from core.schema import family_stages, leaf_paths

    w = doc["workload"]
    title = (
        f"{w['model']} {w['mode']} {w['width']}x{w['height']}  "
        f"grid {w['w_crop']}x{w['h_crop']} ({w['n_crops']} crops)  "
        f"image tokens {w['n_image_tokens']}  prefill_len {w['prefill_len']}  decode {w['decode_tokens']}  "
        f"impl {w['impl']}  lm_head {w['lm_head_scope']}"
    )
    paths = leaf_paths(family_stages(w["model"]))
    leaves = [doc["stages"][stage][part] for stage, part in paths]
    console = Console()
    console.print(title)
    groups = (
        ("work, GFLOP (2 per multiply-add)", [m for m in METRICS if m.endswith("_flops")]),
        ("bytes, MB (peak: live bytes above the stage's entry)", [m for m in METRICS if m.endswith("_bytes")]),
    )
    for caption, metrics in groups:  # two tables: each fits 80 columns without cutting a number
        table = Table(title=caption, title_justify="left")
        table.add_column("stage", no_wrap=True)
        table.add_column("part", no_wrap=True)
        for m in metrics:
            table.add_column(m.removesuffix("_flops").removesuffix("_bytes"), justify="right", no_wrap=True)
        for (stage, part), leaf in zip(paths, leaves, strict=True):
            table.add_row(stage, part, *(_fmt(m, leaf[m]) for m in metrics))
        total = {m: combine(m, [leaf[m] for leaf in leaves]) for m in metrics}  # work adds up, a peak does not
        table.add_row("total", "", *(_fmt(m, total[m]) for m in metrics), style="bold")
        console.print(table)
    mem = doc.get("memory")
    if mem:  # what stays resident besides the stages' transients
        kv = mem["kv_cache_resident_bytes"]
        n = sum(mem["parameters"].values())
        console.print(
            f"resident: weights {mem['weight_resident_bytes'] / 1e6:,.1f} MB ({n / 1e9:.3f} B parameters), "
            f"KV cache {kv[0] / 1e6:,.1f} MB after the prefill, {kv[-1] / 1e6:,.1f} MB after the last step"
        )
    console.print("--json for exact integers")


def _fmt(metric: str, value: int) -> str:
    return f"{value / 1e9:,.3f}" if metric.endswith("_flops") else f"{value / 1e6:,.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
