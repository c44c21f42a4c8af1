"""The vendor options `dsocr-measure` and `run_verify_end2end*` share (backend, device, execution), one definition.

Torch-free, so --help stays instant; choices come from the backend registry and `backends.base`.
"""

from __future__ import annotations

import argparse

from core.options import user_path
from vendor_shim.backends import REGISTRY
from vendor_shim.backends.base import DEVICES, EXECUTION_CHOICES, VISION_DEVICE_CHOICES


def add_vendor_options(
    parser: argparse.ArgumentParser, *, default_device: str = "cpu", vision_split: bool = True
) -> argparse._ArgumentGroup:
    """``vision_split=False`` for commands that count the vision stack alone (no --vision-device)."""
    g = parser.add_argument_group("vendor")
    g.add_argument(
        "--backend",
        choices=REGISTRY.names(),
        default=REGISTRY.default,
        help="implementation to measure: " + "; ".join(f"{b.name}: {b.summary}" for b in REGISTRY),
    )
    g.add_argument("--vendor-dir", type=user_path, help="local snapshot folder (snapshot backends: remote-code)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow executing the snapshot's Python files")
    g.add_argument("--device", choices=DEVICES, default=default_device, help="where the model runs")
    g.add_argument(
        "--decoder-layers",
        type=int,
        metavar="N",
        help="build the decoder with N layers (backends that can: vllm); the analytic model is told the same depth",
    )
    if vision_split:
        g.add_argument(
            "--vision-device",
            choices=VISION_DEVICE_CHOICES,
            default="auto",
            help="meta: count the vision stack shapes-only on meta, the decoder on --device; same: all on --device; "
            "auto: meta when --device is cpu and the backend can split (identical counts, tested)",
        )
    g.add_argument(
        "--execution",
        choices=EXECUTION_CHOICES,
        default="auto",
        help="shapes: counted ops return zeros of the right shape without arithmetic (same ops, same counts, "
        "balanced MoE routing); real: do the arithmetic (the reference); auto: real on cuda, else shapes",
    )
    return g


def snapshot_options_misused(args: argparse.Namespace) -> str | None:
    """The one-line usage error when --vendor-dir/--trust-remote-code are given to a backend that reads no
    snapshot (they would be silently ignored), else None."""
    if REGISTRY.spec(args.backend).needs_vendor_dir:
        return None
    snapshot = " or ".join(f"--backend {b.name}" for b in REGISTRY if b.needs_vendor_dir)
    for flag, given in (("--vendor-dir", args.vendor_dir is not None), ("--trust-remote-code", args.trust_remote_code)):
        if given:
            return f"{flag} applies only to {snapshot} (a snapshot backend): drop it or add the backend"
    return None


def depth_overrides(decoder_layers: int | None) -> list[str]:
    """The analytic override that gives the cost model the depth the backend builds (none at the published depth)."""
    return [] if decoder_layers is None else [f"decoder.num_layers={decoder_layers}"]
