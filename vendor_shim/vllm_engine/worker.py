"""Subprocess entry of backend `vllm`: count workloads with vLLM's engine, inside the vLLM environment.

    <vllm env>/bin/python -m vendor_shim.vllm_engine.worker --request REQ.json --out REPLY.json

The parent (`vendor_shim.backends.vllm`) starts it with the interpreter of the project-managed vLLM environment
(`vendor_shim.vllm_engine.env`) and the project root on PYTHONPATH, so vLLM's torch and transformers are the ones
imported here.  Protocol and error lines as the remote-code worker's (`vendor_shim.remote_code.worker`): the request
holds ``family``, ``workloads``, ``device``, ``decoder_layers``, ``work_dir``, ``dtype_reason``; the reply
``{"results": [{"trace": ...} | {"error": {...}}, ...]}``; one engine is built per dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from vendor_shim.remote_code.worker import ERROR_TAG, count_workloads, one_line


def run(request: dict[str, Any]) -> dict[str, Any]:
    from vendor_shim.vllm_engine.engine import VllmEngineBackend

    backend = VllmEngineBackend(
        request["family"], Path(request["work_dir"]), decoder_layers=request.get("decoder_layers")
    )
    return {"results": count_workloads(backend, request)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vendor_shim.vllm_engine.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--request", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from vendor_shim.errors import VendorShimError

    try:
        doc = run(json.loads(args.request.read_text(encoding="utf-8")))
    except VendorShimError as exc:
        print(f"{ERROR_TAG} {exc.exit_code} {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # vLLM itself failed: exit 3 with its message
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(f"{ERROR_TAG} 3 the vLLM run failed ({type(exc).__name__}: {one_line(exc)})", file=sys.stderr)
        return 3
    from reports.files import atomic_write_text

    atomic_write_text(args.out, json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
