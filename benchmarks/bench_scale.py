"""The full-benchmark scale: N pages (default 1,355, OmniDocBench's size) at output lengths drawn up to 4,000
tokens, geometries cycled from the embedded set, end to end with a fresh cache.  Target (issue 24): < 10 min on
2 cores.  Printed, never asserted.

    python benchmarks/bench_scale.py [--pages N] [--max-tokens T] [--seed S] [--work DIR] [-- extra CLI args]

It writes, under ``--work`` (default: a temporary folder, removed afterwards), an OmniDocBench-format
annotation (``OmniDocBench.json``: one entry per page, ``page_info`` with the embedded geometry), one blank PNG
per embedded geometry that the entries share, a ``--decode-tokens-file`` (page id -> tokens drawn uniformly from
1..T, seeded) and the run's output and cache; then runs ``run_verify_end2end --omnidocbench`` in a child
process, timed, and prints the wall time, the child's peak memory and the report sizes.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_pages(work: Path, pages: int, max_tokens: int, seed: int) -> tuple[Path, Path, list[int]]:
    """The annotation root and the lengths file; returns (root, lengths file, lengths)."""
    from PIL import Image

    manifest = json.loads((REPO / "datasets" / "embedded_pages.json").read_text(encoding="utf-8"))["pages"]
    root = work / "pages"
    (root / "images").mkdir(parents=True, exist_ok=True)
    for geometry in manifest:
        Image.new("L", (geometry["width"], geometry["height"]), 255).save(root / "images" / f"{geometry['id']}.png")
    rng = random.Random(seed)
    entries, lengths, tokens = [], {}, []
    for i in range(pages):
        geometry = manifest[i % len(manifest)]
        page_id = f"p{i:05d}"  # the id is the image stem: one symlink per page to its geometry's image
        link = root / "images" / f"{page_id}.png"
        if not link.exists():
            link.symlink_to(f"{geometry['id']}.png")
        entries.append(
            {
                "page_info": {
                    "image_path": f"{page_id}.png",
                    "width": geometry["width"],
                    "height": geometry["height"],
                    "page_no": i,
                    "page_attribute": {"data_source": geometry["data_source"]},
                },
                "layout_dets": [],
            }
        )
        n = rng.randint(1, max_tokens)
        lengths[page_id] = n
        tokens.append(n)
    (root / "OmniDocBench.json").write_text(json.dumps(entries), encoding="utf-8")
    lengths_file = work / "lengths.json"
    lengths_file.write_text(json.dumps(lengths), encoding="utf-8")
    return root, lengths_file, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1355)
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep inputs, cache and output here")
    ap.add_argument("extra", nargs="*", help="after --: extra run_verify_end2end arguments")
    args = ap.parse_args()
    from benchmarks.host import host_line

    print(host_line())
    work = args.work or Path(tempfile.mkdtemp(prefix="dsocr-scale-"))
    try:
        root, lengths_file, tokens = write_pages(work, args.pages, args.max_tokens, args.seed)
        print(
            f"{args.pages} pages, decode tokens 1..{args.max_tokens} (seed {args.seed}): total {sum(tokens):,}, "
            f"mean {sum(tokens) / len(tokens):,.0f}, max {max(tokens):,}"
        )
        out, cache = work / "out", work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "verify.cli", "--omnidocbench", str(root),
            "--decode-tokens-file", str(lengths_file), "--cache-dir", str(cache), "--output-dir", str(out),
            "--quiet", *args.extra,
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print((done.stdout + done.stderr).strip().splitlines()[-1] if (done.stdout + done.stderr).strip() else "")
        sizes = {f.name: f.stat().st_size for f in out.rglob("report.*")}
        print(
            f"rc {done.returncode} | wall {wall:,.1f} s ({wall / args.pages * 1000:,.0f} ms a page) | child peak "
            f"{peak:,.2f} GiB | " + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in sorted(sizes.items()))
        )
        return done.returncode
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
