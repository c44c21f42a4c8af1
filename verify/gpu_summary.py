"""Per stage of a verify run: the tensor-level peak (measured and modeled), the CUDA allocator's peak, wall time.

``python -m verify.gpu_summary RUN [RUN ...] [--out FILE.md]`` reads each run's ``report.json`` (a run folder,
an ``--output-dir`` holding one run, or the file itself) and prints one markdown table: per run, page, stage and
part, ``peak_bytes`` as the vendor measured it (live tensor storages) and as the analytic model states it, the
trace's ``allocator_peak_bytes`` (CUDA only: `vendor_shim.device_memory`) with its ratio to the tensor peak, and
the stage's wall seconds (``timing.stage_wall_s``; device time on CUDA).  Reading only: nothing is gated here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("run", "page", "stage", "part", "peak vendor", "peak analytic", "allocator", "alloc/vendor", "wall s")


def find_report(path: Path) -> Path:
    """The report.json of a run folder, of an output dir holding exactly one run, or the file itself."""
    if path.is_file():
        return path
    if (path / "report.json").is_file():
        return path / "report.json"
    found = sorted(path.glob("*/report.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected one run with a report.json inside, found {len(found)}")
    return found[0]


def _peak_rows(page: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(stage, part) -> the peak_bytes comparison row of one page."""
    return {(r["stage"], r["part"]): r for r in page.get("rows") or [] if r.get("metric") == "peak_bytes"}


def page_rows(label: str, page: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage x part of one page (module docstring); a page without a trace gives none."""
    trace = page.get("trace")
    if not trace:
        return []
    peaks = _peak_rows(page)
    wall = (trace.get("timing") or {}).get("stage_wall_s") or {}
    out = []
    for stage, parts in trace["stages"].items():
        for part, leaf in parts.items():
            if part == "steps" or not isinstance(leaf, dict):
                continue
            row = peaks.get((stage, part), {})
            vendor = leaf.get("peak_bytes")
            alloc = leaf.get("allocator_peak_bytes")
            out.append(
                {
                    "run": label,
                    "page": (page.get("page") or {}).get("page_id"),
                    "stage": stage,
                    "part": part,
                    "peak vendor": vendor,
                    "peak analytic": row.get("analytic"),
                    "allocator": alloc,
                    "alloc/vendor": round(alloc / vendor, 4) if alloc is not None and vendor else None,
                    "wall s": round(wall[stage][part], 4) if part in wall.get(stage, {}) else None,
                }
            )
    return out


def summary_rows(reports: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of every page of every (label, report document)."""
    return [row for label, doc in reports for page in doc.get("pages") or [] for row in page_rows(label, page)]


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:g}"
    return f"{int(v):,}" if isinstance(v, int | float) else str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m verify.gpu_summary", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders, output dirs holding one run, or report.json files")
    p.add_argument("--out", type=Path, help="also write the table here (and FILE.json beside it)")
    args = p.parse_args(argv)
    reports = []
    for path in args.runs:
        try:
            reports.append((path.name, json.loads(find_report(path).read_text())))
        except (OSError, ValueError) as exc:
            print(f"gpu_summary: {path}: {exc}", file=sys.stderr)
    rows = summary_rows(reports)
    text = markdown(rows)
    sys.stdout.write(text)
    print(f"gpu_summary: {len(rows)} rows from {len(reports)} of {len(args.runs)} runs")
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0 if reports and len(reports) == len(args.runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
