"""Error types of the vendor shim, each mapped to one CLI exit code.

`VendorInputError` -> exit 2 (bad workload, usage, unavailable device, refused remote code).
`VendorRunError` -> exit 3 (the vendor run itself failed, or what it received disagrees with the workload).
`InfrastructureError` -> exit 2 (this machine's setup failed, not the vendor: the cache, the pinned environment).
Messages name the problem and the fix in one line.
"""

from __future__ import annotations


class VendorShimError(Exception):
    """Base class; carries the CLI exit code."""

    exit_code = 3


class VendorInputError(VendorShimError, ValueError):
    """The request cannot be run as given (bad input, missing device, untrusted code)."""

    exit_code = 2


class VendorRunError(VendorShimError, RuntimeError):
    """The vendor model failed while running, or the harness found an inconsistency."""

    exit_code = 3


class InfrastructureError(VendorShimError):
    """A fault of the setup, never of the vendor: a read-only or corrupted cache or pinned environment.

    The message says which ("cache", "environment") and names the fix (e.g. delete that folder to rebuild it).
    """

    exit_code = 2
    TAG = "[environment] "  # how the remote-code worker marks one on its error line


class WorkloadMismatchError(VendorRunError):
    """The model received a different grid or token count than the workload says."""


class UncountableOpError(VendorRunError):
    """A FLOP formula cannot be evaluated (e.g. `_grouped_mm` offsets on the meta device)."""
