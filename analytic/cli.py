"""`python -m analytic` / `dsocr-analytic`: the analytic cost of one page, as JSON or a table.

Exit codes: 0 ok, 2 bad input (unknown mode, non-positive sizes, inconsistent overrides, usage).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from analytic.layers.common import ConfigError
from analytic.profiles import ProfileError
from analytic.workload import DTYPES, MODES, VisionWorkload, WorkloadError, check_positions


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line + exit 2, like argparse but without the usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m analytic", description="Analytic FLOP/byte cost of DeepSeek-OCR on one page.")
    p.add_argument("--mode", choices=None, default=None, help=f"mode preset: {', '.join(MODES)}")
    p.add_argument("--base-size", type=int, default=None, help="override the mode's base_size (global view)")
    p.add_argument("--image-size", type=int, default=None, help="override the mode's image_size")
    p.add_argument("--crop-mode", dest="crop_mode", action="store_true", default=None, help="enable crops")
    p.add_argument("--no-crop-mode", dest="crop_mode", action="store_false", help="disable crops")
    p.add_argument("--width", type=int, required=True, help="page width in pixels")
    p.add_argument("--height", type=int, required=True, help="page height in pixels")
    p.add_argument("--prompt-tokens", type=int, default=12, help="prompt text tokens (excl. BOS and image tokens)")
    p.add_argument("--decode-tokens", type=int, default=0, help="K single-token decode steps after the prefill")
    p.add_argument("--lm-head", choices=("all", "last"), default=None, help="lm_head scope (default: the profile's)")
    p.add_argument("--impl", choices=("official", "hf"), default="official", help="implementation profile")
    p.add_argument("--attn-impl", choices=("eager", "sdpa"), default="eager", help="decoder attention")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype for the byte metrics")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--records", action="store_true", help="include per-op records (with --json)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override of the analytic config, repeatable (e.g. decoder.num_layers=2)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workload = VisionWorkload.from_page(
            args.width,
            args.height,
            args.mode,
            base_size=args.base_size,
            image_size=args.image_size,
            crop_mode=args.crop_mode,
            prompt_tokens=args.prompt_tokens,
            decode_tokens=args.decode_tokens,
            lm_head_scope=args.lm_head,
            impl=args.impl,
            attn_impl=args.attn_impl,
            dtype=args.dtype,
        )
        from analytic.model import build_cost_model

        model = build_cost_model(args.override)
        limit = model.decoder.max_position_embeddings
        check_positions(limit, workload.n_image_tokens, workload.prompt_tokens, workload.decode_tokens)
        est = model.estimate(workload, records=args.records)
    except (WorkloadError, ConfigError, ProfileError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except Exception as exc:  # an override the config accepts but the formulas cannot use (patch_size=abc)
        lines = str(exc).strip().splitlines()
        print(f"error: analytic config override failed: {lines[0] if lines else type(exc).__name__}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(est.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        _print_table(est.to_dict())
    return 0


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from analytic.schema import METRICS, leaf_paths

    w = doc["workload"]
    title = (
        f"{w['mode']} {w['width']}x{w['height']}  grid {w['w_crop']}x{w['h_crop']} ({w['n_crops']} crops)  "
        f"image tokens {w['n_image_tokens']}  prefill_len {w['prefill_len']}  decode {w['decode_tokens']}  "
        f"impl {w['impl']}  lm_head {w['lm_head_scope']}"
    )
    table = Table(title=title, caption="FLOPs in GFLOP (2 per multiply-add), bytes in MB; --json for exact integers")
    table.add_column("stage")
    table.add_column("part")
    for m in METRICS:
        table.add_column(m.replace("_flops", " GF").replace("_bytes", " MB"), justify="right")
    total = dict.fromkeys(METRICS, 0)
    for stage, part in leaf_paths():
        leaf = doc["stages"][stage][part]
        table.add_row(stage, part, *(_fmt(m, leaf[m]) for m in METRICS))
        for m in METRICS:
            total[m] += leaf[m]
    table.add_row("total", "", *(_fmt(m, total[m]) for m in METRICS), style="bold")
    Console().print(table)


def _fmt(metric: str, value: int) -> str:
    return f"{value / 1e9:,.3f}" if metric.endswith("_flops") else f"{value / 1e6:,.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
