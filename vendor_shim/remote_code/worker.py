"""Subprocess entry: count one workload on a DeepSeek-OCR snapshot, inside the pinned env.

    python -m vendor_shim.remote_code.worker --request REQ.json --out TRACE.json

The parent (`vendor_shim.backends.remote_code`) starts it with the pinned environment
first on PYTHONPATH, so ``import transformers`` gives 4.46.x here while the caller keeps
its own.  The process-wide patches of `compat` (torchvision stub, ``.cuda()`` redirect) are
applied before the snapshot is imported and die with the process.

Protocol: the request holds ``vendor_dir``, ``workloads`` (a list of
``VisionWorkload.to_dict()``), ``device``, ``vision_only``, ``fvcore`` and ``env_info``;
``{"results": [{"trace": Trace.to_dict()} | {"error": {...}}, ...]}`` is written to ``--out``
(one model build serves every workload of the same dtype and attention).  On failure the last stderr line is
``DSOCR-WORKER-ERROR <exit code> <one-line message>`` and the process exits with that code
(2: bad snapshot or request, 3: the run failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from vendor_shim.backends.worker_process import ERROR_TAG


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Count every workload of the request; the model is built once per (dtype, attention).

    Set-up failures (bad snapshot, no GPU) raise and fail the whole request; a failure of
    one workload is returned in its slot as ``{"error": {"exit_code", "message"}}``.
    """
    backend = _snapshot_backend(request)
    return {"results": count_workloads(backend, request)}


def _snapshot_backend(request: dict[str, Any]) -> Any:
    """The snapshot's in-worker backend, its model module imported: the process is patched and the pinned
    environment checked first, so a broken environment is named as such, never blamed on the snapshot."""
    from vendor_shim.remote_code import compat

    torchvision = compat.install_torchvision_stub()
    compat.redirect_cuda(request["device"])
    env_path = str(request.get("env_info", {}).get("pinned_env") or "")
    _check_pinned_env(env_path)

    import torch

    from vendor_shim.errors import VendorInputError, VendorShimError
    from vendor_shim.remote_code.model import RemoteCodeModelBackend
    from vendor_shim.remote_code.snapshot import load_snapshot

    device, vision_only = request["device"], bool(request["vision_only"])
    if device == "cuda" and not torch.cuda.is_available():
        raise VendorInputError("device 'cuda' requested but torch sees no GPU: use --device cpu")
    snapshot = load_snapshot(request["vendor_dir"], family=request.get("family"))
    backend = RemoteCodeModelBackend(snapshot, env_info={"torchvision": torchvision, **request.get("env_info", {})})
    reason = backend.supports_device(device, vision_only)
    if reason:
        raise VendorInputError(reason)
    try:
        backend.module()  # import errors fail the request, naming the file
    except VendorShimError as exc:
        if _failed_inside(exc, env_path):  # the snapshot is fine: a file of the pinned environment is not
            raise _env_broken(env_path, exc) from exc
        raise
    return backend


def count_workloads(backend: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One slot per workload, a trace or its error; one model in memory at a time, rebuilt when the
    (dtype, attention) changes."""
    from core.workload import VisionWorkload
    from vendor_shim.errors import VendorShimError
    from vendor_shim.harness import run_counted

    device, vision_only = request["device"], bool(request["vision_only"])
    execution = str(request.get("execution", "real"))
    built: dict[tuple[str, str], Any] = {}
    results: list[dict[str, Any]] = []
    for item in request["workloads"]:
        workload = VisionWorkload.from_dict(item)
        key = (workload.dtype, workload.attn_impl)
        try:
            reused = key in built
            if not reused:
                built.clear()  # one model in memory at a time
                built[key] = backend.build(
                    device=device,
                    dtype=workload.dtype,
                    attn_impl=workload.attn_impl,
                    vision_only=vision_only,
                    execution=execution,
                )
            trace = run_counted(
                backend,
                built[key],
                workload,
                vision_only=vision_only,
                fvcore=bool(request.get("fvcore", False)),
                model_reused=reused,
                execution=execution,
                dtype_reason=request.get("dtype_reason"),
            )
            results.append({"trace": trace.to_dict()})
        except VendorShimError as exc:
            where = _snapshot_frame(exc, request) if exc.exit_code == 3 else ""
            results.append({"error": {"exit_code": exc.exit_code, "message": one_line(exc) + where}})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vendor_shim.remote_code.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--request", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.dont_write_bytecode = True  # never write into the snapshot directory
    from vendor_shim.errors import InfrastructureError, VendorShimError

    request: dict[str, Any] | None = None
    try:
        request = json.loads(args.request.read_text(encoding="utf-8"))
        doc = run(request)
    except VendorShimError as exc:
        where = _snapshot_frame(exc, request) if exc.exit_code == 3 else ""  # input errors name their file
        tag = InfrastructureError.TAG if isinstance(exc, InfrastructureError) else ""
        print(f"{ERROR_TAG} {exc.exit_code} {tag}{one_line(exc)}{where}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the snapshot's own code failed while running: exit 3 with its message
        import traceback

        traceback.print_exc(file=sys.stderr)
        where = _snapshot_frame(exc, request)
        print(f"{ERROR_TAG} 3 the run failed ({type(exc).__name__}: {one_line(exc)}){where}", file=sys.stderr)
        return 3
    from reports.files import atomic_write_text  # a unique temporary beside the reply, never a fixed name

    atomic_write_text(args.out, json.dumps(doc))
    return 0


def _check_pinned_env(env_path: str) -> None:
    """The pinned packages import, from the pinned environment; else an InfrastructureError naming its folder."""
    if not env_path:
        return
    import importlib

    for name in ("transformers", "tokenizers"):
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise _env_broken(env_path, exc) from exc
        if not Path(str(getattr(module, "__file__", ""))).resolve().is_relative_to(Path(env_path).resolve()):
            raise _env_broken(env_path, ImportError(f"{name} is imported from {module.__file__}, not from it"))


def _env_broken(env_path: str, exc: BaseException) -> Exception:
    from vendor_shim.errors import InfrastructureError
    from vendor_shim.remote_code.env import broken_env_message

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return InfrastructureError(broken_env_message(env_path, f"{type(cause).__name__}: {one_line(cause)}"))


def _failed_inside(exc: BaseException, folder: str) -> bool:
    """Whether the innermost frame of the failure (or its cause) is a file under `folder`."""
    if not folder:
        return False
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    import traceback

    files = [Path(f.filename) for f in traceback.extract_tb(cause.__traceback__)]
    if isinstance(cause, SyntaxError) and cause.filename:
        files.append(Path(cause.filename))
    return bool(files) and files[-1].resolve().is_relative_to(Path(folder).resolve())


def _snapshot_frame(exc: BaseException, request: dict[str, Any] | None) -> str:
    """' at FILE:LINE' of the innermost snapshot frame a run-time failure went through, else ''."""
    import traceback

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    root = Path(str((request or {}).get("vendor_dir", ""))).resolve()
    hits = [f for f in traceback.extract_tb(cause.__traceback__) if Path(f.filename).resolve().parent == root]
    return f" at {hits[-1].filename}:{hits[-1].lineno}" if hits else ""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
