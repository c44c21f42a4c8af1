"""Running a backend's worker subprocess: one request file in, one reply file out, errors mapped to exit codes.

Shared by the out-of-process backends (remote-code: the main interpreter with a pinned folder first on its path;
vllm: the interpreter of vLLM's own environment).  The worker writes its reply to ``--out``; on failure its last
tagged stderr line, ``DSOCR-WORKER-ERROR <exit code> <one-line message>``, says why (2: bad input, 3: the run failed;
an `InfrastructureError` message keeps its tag, so a broken environment is named as such).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from vendor_shim.errors import InfrastructureError, VendorInputError, VendorRunError, VendorShimError

ERROR_TAG = "DSOCR-WORKER-ERROR"


def run_worker(
    request: dict[str, Any],
    *,
    python: str,
    module: str,
    pythonpath: str,
    timeout_s: float | None,
    label: str,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m module --request R --out O`` on ``request`` in a temporary folder; its reply, or the mapped
    error (``label`` names the worker in messages)."""
    with tempfile.TemporaryDirectory(prefix=f"dsocr-{label}-") as tmp:
        req_path, out_path = Path(tmp) / "request.json", Path(tmp) / "reply.json"
        req_path.write_text(json.dumps(request), encoding="utf-8")
        child_env = dict(os.environ)
        child_env.update(
            PYTHONPATH=pythonpath,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TRANSFORMERS_VERBOSITY="error",
            PYTHONDONTWRITEBYTECODE="1",
            **(extra_env or {}),
        )
        cmd = [python, "-m", module, "--request", str(req_path), "--out", str(out_path)]
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, env=child_env, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise VendorRunError(f"{label} worker ran past {timeout_s:.0f} s: raise the timeout") from exc
        if proc.returncode != 0 or not out_path.is_file():
            raise worker_error(proc, label)
        return json.loads(out_path.read_text(encoding="utf-8"))


def worker_error(proc: subprocess.CompletedProcess[str], label: str) -> Exception:
    """Map the worker's tagged last line to the right error type (exit code 2 or 3)."""
    for line in reversed((proc.stderr or "").splitlines()):
        if line.startswith(ERROR_TAG):
            _, code, message = [*line.split(" ", 2), "", ""][:3]
            if message.startswith(InfrastructureError.TAG):  # the worker's environment, not the model code
                return InfrastructureError(message.removeprefix(InfrastructureError.TAG))
            return (VendorInputError if code == "2" else VendorRunError)(message)
    tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-1:] or ["no output"]
    return VendorRunError(f"{label} worker exited {proc.returncode} ({tail[0][:300]}): see its stderr")


def reply_slots(reply: dict[str, Any], expected: int, label: str) -> list[dict[str, Any] | VendorShimError]:
    """The worker's results, one per workload: a trace document, or its failure as the error it maps to (exit 2 or
    3); a reply of the wrong shape raises."""
    results = reply.get("results")
    if not isinstance(results, list) or len(results) != expected:
        raise VendorRunError(f"{label} worker returned a malformed reply: run again, then report a bug")
    out: list[dict[str, Any] | VendorShimError] = []
    for item in results:
        if "error" in item:
            err = item["error"]
            cls = VendorInputError if err.get("exit_code") == 2 else VendorRunError
            out.append(cls(str(err.get("message", f"{label} worker failed"))))
        else:
            out.append(item["trace"])
    return out
