"""What one metered decode step costs (issue 24: from ~128 ms toward 15 ms on 2 cores), printed, never asserted.

Backend hf at the published depth, one gundam A4 page (1654 x 2339, 2 x 3 crops), shapes execution, the vision
stack on meta, the model built once.  A step's cost = (run of K2 steps - run of K1 steps) / (K2 - K1), the best of
``--repeat`` runs each (so vision, prefill and the trace's assembly cancel), next to the median of the decoder
root's own wall time per step.  Two stacks: the audit alone (the default) and the stock FlopCounterMode stacked
above it (``cross_check``).  Prints the CPU, its capability, cores and the dtype.

    python benchmarks/bench_decode_step.py [--model deepseek-ocr-2] [--k1 8 --k2 48] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deepseek-ocr")
    ap.add_argument("--k1", type=int, default=8)
    ap.add_argument("--k2", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from core.workload import VisionWorkload
    from vendor_shim.backends import get_backend
    from vendor_shim.cache import ModelCache
    from vendor_shim.env import cpu_info, resolve_dtype
    from vendor_shim.harness import run_counted

    dtype = resolve_dtype("auto", "cpu").dtype
    be = get_backend("hf", model=args.model)
    models = ModelCache()
    w0 = VisionWorkload.from_page(1654, 2339, "gundam", impl="hf", dtype=dtype, model=args.model)
    loaded, _ = models.get_or_build(
        be, device="cpu", dtype=dtype, attn_impl=w0.attn_impl, vision_only=False, execution="shapes"
    )
    vision, _ = models.get_or_build(be, device="meta", dtype=dtype, attn_impl=w0.attn_impl, vision_only=True)

    def run(k: int, cross_check: bool) -> tuple[float, list[float]]:
        w = VisionWorkload.from_page(1654, 2339, "gundam", impl="hf", dtype=dtype, model=args.model, decode_tokens=k)
        t = time.perf_counter()
        tr = run_counted(
            be,
            loaded,
            w,
            vision_only=False,
            fvcore=False,
            model_reused=True,
            vision_loaded=vision,
            execution="shapes",
            cross_check=cross_check,
        )
        walls = [c["wall_s"] for c in tr.calls if c["stage"] == "decode" and c["root"] == "decoder"]
        return time.perf_counter() - t, walls

    print(f"host: {cpu_info()}; dtype {dtype}; {args.model}, A4 gundam page, prefill_len {w0.prefill_len}")
    run(2, False)  # warm the layout memo and the allocator
    for cross_check, label in ((False, "audit alone (default)"), (True, "stock FlopCounterMode stacked")):
        t1 = min(run(args.k1, cross_check)[0] for _ in range(args.repeat))
        runs = [run(args.k2, cross_check) for _ in range(args.repeat)]
        t2 = min(t for t, _ in runs)
        step = (t2 - t1) / (args.k2 - args.k1)
        root = statistics.median(w for _, walls in runs for w in walls)
        print(f"{label:32s} {step * 1000:6.1f} ms per decode step (decoder root alone: median {root * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
