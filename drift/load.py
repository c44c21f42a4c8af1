"""Reads one side of a `dsocr-diff`: a run (its folder or report.json) or a vendor trace (`dsocr-measure --json`).

Either becomes a `Side`: the measured samples (one per page; a trace is one sample without a page id) and a flat
environment (library versions, device, dtype, backend, code hashes) to explain what differs. Anything unreadable
raises `DiffInputError` with one line naming the fix (exit 2): a diff over half-read input would be a quiet lie.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.document import REPORT_FORMATS, read_report
from reports.step_tables import StepTableError
from reports.writer import REPORT_FILES, is_partial_run
from vendor_shim.trace import SCHEMA as TRACE_SCHEMA
from vendor_shim.trace import TraceValidationError, validate_trace_dict

REPORT_FILE = REPORT_FILES["json"]
_WHAT = "pass a run folder (OUTPUT_DIR/<run id>), its report.json, or a trace written by dsocr-measure --json"
_ENV_KEYS = ("transformers", "torch", "python", "backend", "device", "device_name", "dtype")
_CPU_KEYS = ("model", "capability")
_MODEL_SKIP = ("model_notes", "weights")


class DiffInputError(ValueError):
    """One side cannot be read as a run or a trace; the message is one line naming the fix."""


@dataclass(frozen=True)
class Sample:
    """One measured workload: a page of a run, or the single workload of a trace."""

    page_id: str | None
    workload: dict[str, Any]
    trace: dict[str, Any] | None  # None: the vendor side did not produce a trace for this page
    error: str | None = None


@dataclass(frozen=True)
class Side:
    """What one argument of `dsocr-diff` holds."""

    label: str  # the path as given
    kind: str  # "run" | "trace"
    samples: tuple[Sample, ...]
    environment: dict[str, str]  # flat, e.g. {"transformers": "5.23.0", "code:vendor_shim": "<sha256>"}
    command: str | None = None  # the run's CLI (run_verify_end2end...), None for a trace


def load_side(path: str | Path, name: str = "A") -> Side:
    """Read `path` (run folder, report.json or trace JSON); `name` prefixes error messages."""
    file = _resolve(Path(path), name)
    doc = _read_json(file, name)
    if isinstance(doc, dict) and doc.get("schema") == TRACE_SCHEMA:
        return _trace_side(str(path), doc, name)
    if isinstance(doc, dict) and "report_format" in doc and "pages" in doc:
        return _run_side(str(path), doc, name)
    raise DiffInputError(f"{name}: {file} is neither a run report nor a vendor trace: {_WHAT}")


def _resolve(path: Path, name: str) -> Path:
    if not path.exists():
        raise DiffInputError(f"{name}: {path} does not exist: {_WHAT}")
    unfinished = path.parent if path.is_file() else path
    if is_partial_run(unfinished):
        raise DiffInputError(
            f"{name}: {unfinished} is a run that never finished (a killed run's staging folder): pass a finished "
            "run; the next run into that output folder removes it"
        )
    if path.is_file():
        return path
    if (path / REPORT_FILE).is_file():
        return path / REPORT_FILE
    runs = sorted(p for p in path.iterdir() if p.is_dir() and not is_partial_run(p) and (p / REPORT_FILE).is_file())
    if len(runs) == 1:  # an --output-dir holding exactly one run
        return runs[0] / REPORT_FILE
    if runs:
        raise DiffInputError(f"{name}: {path} holds {len(runs)} runs: pass one of them, e.g. {runs[-1]}")
    raise DiffInputError(f"{name}: no {REPORT_FILE} in {path}: {_WHAT}")


def _read_json(file: Path, name: str) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiffInputError(
            f"{name}: cannot read {file} ({exc.__class__.__name__}): check the path and permissions"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DiffInputError(
            f"{name}: {file} is not valid JSON (line {exc.lineno}, column {exc.colno}): re-run to write it again"
        ) from None
    except RecursionError:
        raise DiffInputError(f"{name}: {file} is nested too deeply to be a report or trace: {_WHAT}") from None


def _checked_trace(doc: Any, where: str, name: str) -> dict[str, Any]:
    try:
        validate_trace_dict(doc)
    except TraceValidationError as exc:
        raise DiffInputError(f"{name}: {where}: {exc}") from None
    return doc


def _trace_side(label: str, doc: dict[str, Any], name: str) -> Side:
    trace = _checked_trace(doc, label, name)
    sample = Sample(page_id=None, workload=dict(trace["workload"]), trace=trace)
    return Side(label, "trace", (sample,), trace_environment(trace))


def _run_side(label: str, doc: dict[str, Any], name: str) -> Side:
    if doc.get("report_format") not in REPORT_FORMATS:
        raise DiffInputError(
            f"{name}: {label} has report_format {doc.get('report_format')!r}, this dsocr-diff reads "
            f"{', '.join(map(str, REPORT_FORMATS))}: use the dsocr-diff of the version that wrote it"
        )
    try:
        doc = read_report(doc)
    except StepTableError as exc:
        raise DiffInputError(f"{name}: {label}: {exc}: re-run to write it again") from None
    pages = doc.get("pages")
    if not isinstance(pages, list) or not pages:
        raise DiffInputError(f"{name}: {label} has no pages: nothing to compare, pass a run that measured pages")
    samples = []
    for i, page in enumerate(pages):
        if not isinstance(page, dict) or not isinstance(page.get("page"), dict):
            raise DiffInputError(f"{name}: {label}: pages[{i}] is not a page result: {_WHAT}")
        page_id = page["page"].get("page_id")
        trace = page.get("trace")
        if trace is not None:
            trace = _checked_trace(trace, f"{label}: page {page_id}", name)
        workload = page.get("workload") or (trace or {}).get("workload") or {}
        samples.append(Sample(str(page_id), dict(workload), trace, page.get("error")))
    first = next((s.trace for s in samples if s.trace), None)
    env = trace_environment(first) if first else {}
    run_env = doc.get("environment") or {}
    for key in ("torch", "transformers", "python"):
        if key in run_env and key not in env:
            env[key] = str(run_env[key])
    for file, digest in (run_env.get("code_hashes") or {}).items():
        env[f"code:{file}"] = str(digest)
    return Side(label, "run", tuple(samples), env, command=doc.get("command"))


def trace_environment(trace: dict[str, Any]) -> dict[str, str]:
    """The flat environment of one trace: what a library, device, dtype or backend change shows up in."""
    env_doc = trace.get("environment") or {}
    env = {k: str(env_doc[k]) for k in _ENV_KEYS if env_doc.get(k) is not None}
    received = trace.get("received") or {}
    execution = received.get("execution")
    if isinstance(execution, dict):
        execution = execution.get("mode")
    if execution is not None:
        env["execution"] = str(execution)
    if received.get("vision_device") is not None:
        env["vision_device"] = str(received["vision_device"])
    model = env_doc.get("model") or {}
    for key, value in _flatten({k: v for k, v in model.items() if k not in _MODEL_SKIP}, "model."):
        env[key] = value
    cpu = env_doc.get("cpu") or {}
    for key in _CPU_KEYS:
        if cpu.get(key) is not None:
            env[f"cpu.{key}"] = str(cpu[key])
    for file, digest in (env_doc.get("code_hashes") or {}).items():
        env[f"code:{file}"] = str(digest)
    env["trace schema_version"] = str(trace.get("schema_version"))
    return env


def _flatten(d: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in d.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        elif value is not None:
            out.append((f"{prefix}{key}", value if isinstance(value, str) else json.dumps(value)))
    return out
