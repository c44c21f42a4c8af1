"""Vendor-side timing targets (issue 3), printed, never asserted.

1. vision-only count of a gundam A4 page (1654x2339, grid 2x3) on the meta device: target < 2 s
   (cold = first call incl. the meta build, warm = model reused; the transformers import is printed apart).
2. end-to-end (vision + prefill + 32 decode tokens) on CPU, construction and imports included (issue 8
   targets on a 2-core AVX2-only CPU: < 60 s with ``--dtype auto``, < 10 s shapes-only, peak RSS < 2 GiB).
   Each configuration ``DTYPE:EXECUTION[:VISION]`` runs in a fresh subprocess (cold: import + build + run);
   the vision stack is counted on meta unless VISION is ``cpu``.  Default: ``auto:shapes,auto:real``.
   To see an AVX2-only CPU on a newer one, cap torch's kernels: ``ATEN_CPU_CAPABILITY=avx2
   ONEDNN_MAX_CPU_ISA=AVX2`` (the host line then says "capped by").

    python benchmarks/bench_vendor.py [--decode-tokens 32] [--configs auto:shapes,auto:real,bfloat16:real:cpu]
        [--model deepseek-ocr|deepseek-ocr-2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time


def one_e2e(
    dtype: str, execution: str, vision_device: str | None, decode_tokens: int, fvcore: bool, family: str
) -> dict:
    t = time.perf_counter()
    from core.schema import family_vision_stages
    from core.workload import VisionWorkload
    from vendor_shim import measure
    from vendor_shim.env import resolve_dtype

    choice = resolve_dtype(dtype, "cpu")
    w = VisionWorkload.from_page(
        1654, 2339, "gundam", prompt_tokens=12, decode_tokens=decode_tokens, impl="hf", dtype=choice.dtype, model=family
    )
    tr = measure(w, device="cpu", fvcore=fvcore, vision_device=vision_device, execution=execution)
    vis = sum(tr.stages[s][b]["tensor_flops"] for s in family_vision_stages(w.model) for b in ("global", "crops"))
    return {
        "wall_s": time.perf_counter() - t,
        "build_s": tr.timing["build_s"],
        "run_s": tr.timing["run_s"],
        "peak_rss_gib": tr.memory["peak_rss_bytes"] / 2**30,
        "total_tflop": tr.totals["counter_total"] / 1e12,
        "vision_tflop": vis / 1e12,
        "complete": tr.complete,
        "dtype": choice.dtype,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--configs", default="auto:shapes,auto:real")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--fvcore", action="store_true", help="include the secondary fvcore count")
    ap.add_argument("--model", default="deepseek-ocr", help="the model family (deepseek-ocr, deepseek-ocr-2)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        dtype, execution, vision = [*args.one.split(":"), "meta"][:3]
        vdev = None if vision == "cpu" else "meta"
        print(json.dumps(one_e2e(dtype, execution, vdev, args.decode_tokens, args.fvcore, args.model)))
        return

    t = time.perf_counter()
    from vendor_shim.backends import get_backend

    importlib.import_module(get_backend("hf", model=args.model).family.module)  # torch + transformers + the model
    import_s = time.perf_counter() - t
    from host import host_line

    from core.workload import VisionWorkload
    from vendor_shim import ModelCache, measure

    print(host_line())
    print(f"model {args.model}; torch + transformers import: {import_s:.2f} s")
    w = VisionWorkload.from_page(1654, 2339, "gundam", prompt_tokens=12, decode_tokens=0, impl="hf", model=args.model)
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
        cmd += ["--model", args.model]
        cmd += ["--fvcore"] if args.fvcore else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"end-to-end {cfg}: FAILED rc={out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        where = "vision and decoder on cpu" if cfg.endswith(":cpu") else "vision on meta, decoder on cpu"
        print(
            f"end-to-end gundam K={args.decode_tokens} {cfg} -> {r['dtype']} ({where}): {r['wall_s']:.1f} s cold "
            f"incl. import (build {r['build_s']:.1f} s, counted run {r['run_s']:.1f} s), peak RSS "
            f"{r['peak_rss_gib']:.2f} GiB, total {r['total_tflop']:.4f} TFLOP (vision {r['vision_tflop']:.4f}), "
            f"complete={r['complete']}"
        )


if __name__ == "__main__":
    main()
