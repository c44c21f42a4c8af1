"""The yardstick of issue 24's vision target: a plain `FlopCounterMode` (FLOPs only, the shim's formulas so that the
total is the same) over transformers' DeepSeek-OCR vision stack built on the meta device, one gundam A4 page.

Paired against the complete count (every metric, the audit, the stage attribution) with farm-bench:

    farm-bench -n 5 --timeout 600 --vs '.venv/bin/python benchmarks/plain_vision_count.py' -- \\
        .venv/bin/dsocr-measure --vision-only --device meta --no-fvcore --dtype bfloat16 --width 1654 --height 2339

Target: the complete count costs at most 1.2x this.  Prints the total (it must equal the complete count's) and the
CPU; never asserted.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deepseek-ocr")
    ap.add_argument("--width", type=int, default=1654)
    ap.add_argument("--height", type=int, default=2339)
    args = ap.parse_args()
    t0 = time.perf_counter()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.workload import VisionWorkload
    from vendor_shim.backends import get_backend
    from vendor_shim.env import cpu_info
    from vendor_shim.formulas import custom_mapping

    be = get_backend("hf", model=args.model)
    w = VisionWorkload.from_page(args.width, args.height, "gundam", impl="hf", dtype="bfloat16", model=args.model)
    loaded = be.build(device="meta", dtype=w.dtype, attn_impl=w.attn_impl, vision_only=True)
    inputs = be.prepare_inputs(loaded, w)
    counter = FlopCounterMode(display=False, custom_mapping=custom_mapping())
    with torch.no_grad(), counter:
        be.run_vision(loaded, inputs)
    print(
        f"plain FlopCounterMode total {counter.get_total_flops():,} in {time.perf_counter() - t0:.2f} s; {cpu_info()}"
    )


if __name__ == "__main__":
    main()
