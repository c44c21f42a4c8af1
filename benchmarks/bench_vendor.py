"""Vendor-side timing targets (issue 3), printed, never asserted.

1. vision-only count of a gundam A4 page (1654x2339, grid 2x3) on the meta device: target < 2 s
   (cold = first call incl. the meta build, warm = model reused; the transformers import is printed apart).
2. end-to-end (vision + prefill + 32 decode tokens) on CPU, construction included: target < 60 s on
   2 cores; peak RSS printed.  Each configuration runs in a fresh subprocess (cold: import + build + run):
   float32 and bfloat16 with the vision stack run for real on the CPU, and float32 with the vision
   stack counted on meta (``vision_device="meta"``, identical counts) and only the decoder on the CPU.

    python benchmarks/bench_vendor.py [--decode-tokens 32] [--configs float32,bfloat16,float32+meta] [--skip-e2e]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def one_e2e(dtype: str, vision_device: str | None, decode_tokens: int, fvcore: bool) -> dict:
    t = time.perf_counter()
    from analytic.workload import VisionWorkload
    from vendor_shim import measure

    w = VisionWorkload.from_page(
        1654, 2339, "gundam", prompt_tokens=12, decode_tokens=decode_tokens, impl="hf", dtype=dtype
    )
    tr = measure(w, device="cpu", fvcore=fvcore, vision_device=vision_device)
    vis = sum(tr.stages[s][b]["tensor_flops"] for s in ("sam", "clip", "projector") for b in ("global", "crops"))
    return {
        "wall_s": time.perf_counter() - t,
        "build_s": tr.timing["build_s"],
        "run_s": tr.timing["run_s"],
        "peak_rss_gib": tr.memory["peak_rss_bytes"] / 2**30,
        "total_tflop": tr.totals["counter_total"] / 1e12,
        "vision_tflop": vis / 1e12,
        "complete": tr.complete,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--configs", default="float32,bfloat16,float32+meta")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--fvcore", action="store_true", help="include the secondary fvcore count")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        dtype, _, vdev = args.one.partition("+")
        print(json.dumps(one_e2e(dtype, vdev or None, args.decode_tokens, args.fvcore)))
        return

    t = time.perf_counter()
    import transformers.models.unlimited_ocr.modeling_unlimited_ocr  # noqa: F401

    import_s = time.perf_counter() - t
    from analytic.workload import VisionWorkload
    from vendor_shim import ModelCache, measure

    print(f"cpu cores: {os.cpu_count()}; transformers import: {import_s:.2f} s")
    w = VisionWorkload.from_page(1654, 2339, "gundam", prompt_tokens=12, decode_tokens=0, impl="hf")
    cache = ModelCache()
    for label in ("cold", "warm"):
        t = time.perf_counter()
        tr = measure(w, device="meta", vision_only=True, model_cache=cache, fvcore=args.fvcore)
        dt = time.perf_counter() - t
        print(
            f"vision-only gundam 1654x2339 (grid {tr.received['w_crop']}x{tr.received['h_crop']}) meta {label}: "
            f"{dt:.2f} s (target < 2 s), total {tr.totals['counter_total'] / 1e12:.3f} TFLOP, complete={tr.complete}"
        )
    if args.skip_e2e:
        return
    for cfg in args.configs.split(","):
        cmd = [sys.executable, __file__, "--one", cfg, "--decode-tokens", str(args.decode_tokens)]
        cmd += ["--fvcore"] if args.fvcore else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"end-to-end {cfg}: FAILED rc={out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        where = "vision on meta, decoder on cpu" if "+meta" in cfg else "all on cpu"
        print(
            f"end-to-end gundam K={args.decode_tokens} {cfg} ({where}): {r['wall_s']:.1f} s cold incl. import "
            f"(target < 60 s; build {r['build_s']:.1f} s, counted run {r['run_s']:.1f} s), peak RSS "
            f"{r['peak_rss_gib']:.2f} GiB, total {r['total_tflop']:.4f} TFLOP (vision {r['vision_tflop']:.4f}), "
            f"complete={r['complete']}"
        )


if __name__ == "__main__":
    main()
