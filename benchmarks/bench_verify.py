"""Throughput of the product run: pages/minute with a cold and a warm trace cache, and peak memory.

Runs `run_verify_end2end` (or `_vision` with --vision-only) in this process on the embedded default set,
twice with the same fresh cache dir: the cold run measures one vendor run per distinct workload
signature, the warm run is served from the on-disk cache.  Target (issue 4): the embedded default end
to end on a 2-core CPU in under 5 minutes.  Printed, never asserted.

    python benchmarks/bench_verify.py [--vision-only] [--limit N] [--decode-tokens K] [-- extra CLI args]

Peak memory is ru_maxrss of this process and of its waited-for children (the remote-code worker).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def count_vendor_runs() -> list[str]:
    """Wraps VendorMeasurer._store, which sees every fresh vendor trace (in-process or a remote-code worker's)
    and never a cache hit: one call per vendor run."""
    from verify.vendor_measure import VendorMeasurer

    real, keys = VendorMeasurer._store, []

    def counting(self, key, trace):
        keys.append(key)
        return real(self, key, trace)

    VendorMeasurer._store = counting
    return keys


def one_run(main, argv: list[str], out: Path, show: bool) -> tuple[int, float, dict[str, Any]]:
    """One CLI run in this process; its console summary is swallowed unless `show`."""
    sink = contextlib.nullcontext() if show else contextlib.redirect_stdout(io.StringIO())
    t = time.perf_counter()
    try:
        with sink:
            code = main([*argv, "--output-dir", str(out)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    wall = time.perf_counter() - t
    reports = sorted(out.glob("*/report.json"))
    return code, wall, json.loads(reports[-1].read_text()) if reports else {}


def signatures(doc: dict[str, Any]) -> int:
    """Distinct workload signatures among the run's pages (what the cache is keyed by, page size aside)."""
    drop = ("width", "height", "extra", "mode")
    sigs = {
        json.dumps({k: v for k, v in p["workload"].items() if k not in drop}, sort_keys=True)
        for p in doc.get("pages", [])
        if p.get("workload")
    }
    return len(sigs)


def max_rel_by_stage(doc: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for s in doc.get("summary", []):
        if s["gated"]:
            key = f"{s['stage']}/{s['part']}"
            out[key] = s["max_rel"] if not isinstance(s["max_rel"], str) else float(s["max_rel"])
    return out


def peak_rss_mib() -> tuple[float, float]:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kib / 1024, child_kib / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vision-only", action="store_true", help="run_verify_end2end_vision instead")
    ap.add_argument("--limit", type=int, help="at most N embedded pages (default: all)")
    ap.add_argument("--decode-tokens", type=int, help="decode steps (default: the CLI's)")
    ap.add_argument("--show", action="store_true", help="print the CLI's own summary tables too")
    ap.add_argument("extra", nargs="*", help="more CLI arguments, after --")
    args = ap.parse_args()
    # platform.platform() (called by every run) forks `uname -p` once and caches it; forked after the model
    # is built, that child would report the parent's RSS as its own peak. Fork it now, while small.
    platform.platform()

    t = time.perf_counter()
    import transformers.models.unlimited_ocr.modeling_unlimited_ocr  # noqa: F401

    from verify.cli import main_end2end, main_vision

    import_s = time.perf_counter() - t
    calls = count_vendor_runs()
    main_fn = main_vision if args.vision_only else main_end2end
    argv = ["--quiet", *args.extra]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.decode_tokens is not None and not args.vision_only:
        argv += ["--decode-tokens", str(args.decode_tokens)]

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        root = Path(tmp)
        argv += ["--cache-dir", str(root / "traces")]
        command = "run_verify_end2end_vision" if args.vision_only else "run_verify_end2end"
        from host import host_line

        print(host_line())
        print(f"{command} {' '.join(argv)}  (torch+transformers import {import_s:.1f} s)")
        results = {}
        for label in ("cold", "warm"):
            before = len(calls)
            code, wall, doc = one_run(main_fn, argv, root / label, args.show)
            pages = len(doc.get("pages", []))
            hits = sum(bool(p.get("cache_hit")) for p in doc.get("pages", []))
            results[label] = (code, wall, doc)
            print(
                f"{label:>4}: exit {code}, {pages} pages in {wall:.1f} s = {pages / wall * 60:.1f} pages/min; "
                f"vendor runs {len(calls) - before}, cache hits {hits}/{pages}, verdict {doc.get('verdict')}"
            )
        cached = len(list((root / "traces").rglob("*.json")))

    doc = results["cold"][2]
    print(
        f"distinct vendor signatures: {signatures(doc)} for {len(doc.get('pages', []))} pages ({cached} traces cached)"
    )
    worst = ", ".join(f"{k} {v:.2%}" for k, v in max_rel_by_stage(doc).items() if v is not None)
    print(f"largest rel delta per stage (tensor_flops): {worst}")
    self_mib, child_mib = peak_rss_mib()
    # children: the largest waited-for child (the remote-code worker; 0 for the in-process hf backend)
    print(f"peak RSS: this process {self_mib / 1024:.2f} GiB, largest child {child_mib / 1024:.2f} GiB")
    return max(code for code, _, _ in results.values())


if __name__ == "__main__":
    sys.exit(main())
