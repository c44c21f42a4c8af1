"""What a stock `torch.utils.flop_counter.FlopCounterMode` reports for one vLLM page, against the complete count.

Runs inside the vLLM environment (it imports vLLM):

    $(python -m vendor_shim.vllm_engine.env)/bin/python benchmarks/vllm_stock_counter.py --decoder-layers 2

One engine, one A4 page (1654 x 2339, gundam), counted twice: once by the project's harness (every op, vLLM's own
kernels charged by vendor_shim/vllm_engine/ops.py), once under a bare FlopCounterMode (torch's formulas only: vLLM's
kernels count zero).  Prints both totals per stage, the stock counter's share, and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deepseek-ocr", choices=("deepseek-ocr", "deepseek-ocr-2"))
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.workload import VisionWorkload
    from vendor_shim.harness import run_counted
    from vendor_shim.vllm_engine.engine import VllmEngineBackend

    work = Path(tempfile.mkdtemp(prefix="dsocr-vllm-bench-"))
    backend = VllmEngineBackend(args.model, work, decoder_layers=args.decoder_layers)
    loaded = backend.build(device="cpu", dtype=args.dtype, attn_impl="paged", vision_only=False)
    page = VisionWorkload.from_page(
        1654, 2339, "gundam", decode_tokens=args.decode_tokens, impl="vllm", dtype=args.dtype, model=args.model
    )
    trace = run_counted(backend, loaded, page, vision_only=False, fvcore=False, execution="real").to_dict()
    ours = trace["totals"]["stage_sum"]
    inputs = backend.prepare_inputs(loaded, page)
    stock = FlopCounterMode(display=False)
    with torch.no_grad(), stock:
        backend.run_generation(loaded, inputs, page.decode_tokens, "last")
    seen = stock.get_total_flops()
    print(
        f"cpu: {platform.processor() or platform.machine()}, "
        f"torch capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{os.cpu_count()} cores, dtype {args.dtype}, {args.model}, decoder layers {args.decoder_layers}, "
        f"{args.decode_tokens} decode steps"
    )
    print(f"complete count (harness): {ours:,} FLOPs")
    print(f"stock FlopCounterMode:    {seen:,} FLOPs ({seen / ours:.1%} of it; {1 - seen / ours:.1%} invisible)")
    print("per stage (harness): vLLM-kernel FLOPs a stock counter cannot see / all")
    for stage, parts in trace["op_breakdown"].items():
        for part, ops in parts.items():
            total = sum(r["flops"] for r in ops.values())
            foreign = sum(r["flops"] for name, r in ops.items() if not name.startswith("aten."))
            if total:
                print(f"  {stage}/{part}: {foreign:,} / {total:,} ({foreign / total:.1%})")


if __name__ == "__main__":
    main()
