"""Runs a real DeepSeek-OCR implementation on one workload and counts what it executes, stage by stage.

Public API: `measure(workload, backend="hf", device="cpu", ...) -> Trace`, `ModelCache`, `Trace`.
Importing this package never imports transformers (backends are loaded on demand).
"""

from vendor_shim.cache import ModelCache
from vendor_shim.errors import VendorInputError, VendorRunError, VendorShimError, WorkloadMismatchError
from vendor_shim.measure import measure
from vendor_shim.trace import SCHEMA_VERSION, Trace, TraceValidationError

__all__ = [
    "SCHEMA_VERSION",
    "ModelCache",
    "Trace",
    "TraceValidationError",
    "VendorInputError",
    "VendorRunError",
    "VendorShimError",
    "WorkloadMismatchError",
    "measure",
]
