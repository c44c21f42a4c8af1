"""Coverage audit: every aten op executed, classified, and attributed to a stage leaf.

`AuditMode` is a `TorchDispatchMode` entered *outside* `FlopCounterMode`, so it sees
exactly the leaf ops the counter executed (after the counter's own decompositions).
For each op it evaluates the counter's formula (the same ``flop_registry`` the
counter uses, custom mapping included) and charges the FLOPs to the innermost active
stage frame of a `StageTracker`; the harness then asserts that the per-stage sum
equals the counter's own total.

Attention kernels (SDPA's CPU/CUDA kernels, the (B, S, H, D) flash/efficient kernels, flash-attn 2's
``flash_attn::`` / ``flashattn::`` custom ops) are handled by formulas from one table,
`vendor_shim.attention_kernels.KERNELS`; flash-attn's ops get theirs when that package has registered them
before the run's counter is built (importing the model does), and an attention op met without one is uncounted
by rule 1 below.

Classification of an op without a formula (most conservative first):

1. its name looks like tensor-core work (`SUSPICIOUS_FRAGMENTS`: mm, matmul, conv,
   attention, ...) -> **uncounted**, always;
2. it touches no floating-point tensor -> ``non_float`` (integer/bool bookkeeping);
3. it is on `ALLOWED_OPS` (elementwise, reductions, softmax, norms, copies, views,
   interpolation, embedding/index ops, ...: work the project reports as
   ``elementwise_flops``, never as ``tensor_flops``) -> ``allowed:<category>``;
4. anything else -> **uncounted**: an op nobody has looked at yet is assumed to hide
   tensor FLOPs until it is added to a formula or to the allow-list with a reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SUSPICIOUS_FRAGMENTS = (
    "mm",
    "matmul",
    "conv",
    "attention",
    "flash",
    "linear",
    "einsum",
    "gemm",
    "bmm",
    "addmv",
    "addr",
    "dot",
    "tensordot",
    "lstm",
    "gru",
    "rnn",
    "mha",
    "multi_head",
    "_mv",
)

# Category -> aten op base names.  Why each category carries no tensor FLOPs:
_ALLOWED: dict[str, tuple[str, ...]] = {
    # pointwise math: O(numel), reported as elementwise_flops by the analytic model
    "elementwise": (
        "add",
        "sub",
        "mul",
        "div",
        "neg",
        "pow",
        "rsqrt",
        "sqrt",
        "exp",
        "log",
        "tanh",
        "sigmoid",
        "silu",
        "gelu",
        "relu",
        "sin",
        "cos",
        "erf",
        "reciprocal",
        "abs",
        "clamp",
        "clamp_min",
        "clamp_max",
        "where",
        "masked_fill",
        "lerp",
        "addcmul",
        "addcdiv",
        "floor",
        "ceil",
        "round",
        "sign",
        "maximum",
        "minimum",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "logical_not",
        "logical_and",
        "logical_or",
        "bitwise_not",
        "bitwise_and",
        "bitwise_or",
        "rsub",
        "trunc",
        "remainder",
        "fmod",
        "isnan",
        "isinf",
        "nan_to_num",
        "hardtanh",
        "leaky_relu",
        "elu",
        "softplus",
        "mish",
        "hardswish",
        "hardsigmoid",
        "exp2",
        "log1p",
        "expm1",
        "frac",
        "true_divide",
        "floor_divide",
        "bitwise_xor",
        "logical_xor",
        "isfinite",
        "gelu_backward",
        "threshold",
        "square",
    ),
    # reductions and normalisations: O(numel)
    "reduction": (
        "sum",
        "mean",
        "var",
        "std",
        "var_mean",
        "std_mean",
        "amax",
        "amin",
        "max",
        "min",
        "argmax",
        "argmin",
        "prod",
        "cumsum",
        "cumprod",
        "norm",
        "linalg_vector_norm",
        "any",
        "all",
        "count_nonzero",
        "topk",
        "logsumexp",
        "_softmax",
        "_safe_softmax",
        "softmax",
        "_log_softmax",
        "log_softmax",
        "native_layer_norm",
        "native_group_norm",
        "native_batch_norm",
        "_native_batch_norm_legit_no_training",
        "_fused_rms_norm",
        "layer_norm",
        "rms_norm",
        "group_norm",
    ),
    # casts, fills, random draws, nearest-neighbour resampling, pooling and sorting by index: data is
    # produced or moved, nothing is computed on it (0 elementwise FLOPs: analytic.op_conventions.MOVEMENT)
    "data": (
        "fill",
        "zero",
        "_to_copy",
        "lift_fresh",
        "alias",
        "detach",
        "dropout",
        "native_dropout",
        "bernoulli",
        "uniform",
        "normal",
        "random",
        "exponential",
        "randn",
        "rand",
        "randint",
        "randperm",
        "randn_like",
        "rand_like",
        "upsample_nearest1d",
        "upsample_nearest2d",
        "_upsample_nearest_exact2d",
        "max_pool2d_with_indices",
        "sort",
        "argsort",
    ),
    # pure data movement, views and allocation: no arithmetic
    "copy_view": (
        "view",
        "_unsafe_view",
        "reshape",
        "permute",
        "transpose",
        "t",
        "expand",
        "clone",
        "contiguous",
        "copy",
        "copy_",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "flatten",
        "unflatten",
        "cat",
        "stack",
        "split",
        "split_with_sizes",
        "chunk",
        "unbind",
        "narrow",
        "as_strided",
        "empty",
        "empty_like",
        "empty_strided",
        "zeros",
        "zeros_like",
        "ones",
        "ones_like",
        "full",
        "full_like",
        "new_empty",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_empty_strided",
        "constant_pad_nd",
        "pad",
        "repeat",
        "repeat_interleave",
        "roll",
        "flip",
        "tril",
        "triu",
        "diagonal",
        "unfold",
        "_reshape_alias",
        "resize_",
        "set_",
        "pixel_shuffle",
        "tile",
        "movedim",
        "swapaxes",
        "view_as",
        "expand_as",
        "alias_copy",
        "view_copy",
        "permute_copy",
        "slice_copy",
        "select_copy",
        "unsqueeze_copy",
        "squeeze_copy",
        "transpose_copy",
        "t_copy",
        "expand_copy",
        "lift",
        "detach_",
        "_local_scalar_dense",
        "item",
        "scalar_tensor",
        "arange",
        "linspace",
        "_assert_async",
        "_assert_tensor_metadata",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "size",
        "stride",
        "numel",
        "dim",
        "is_contiguous",
        "storage_offset",
        "is_same_size",
        "_has_compatible_shallow_copy_type",
        "_unsafe_index",
        "resolve_conj",
        "resolve_neg",
        "_conj",
        "conj",
        "real",
    ),
    # resampling of position tables: a handful of taps per output element
    "interpolation": (
        "upsample_bicubic2d",
        "_upsample_bicubic2d_aa",
        "upsample_bilinear2d",
        "_upsample_bilinear2d_aa",
        "upsample_linear1d",
        "grid_sampler_2d",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool1d",
    ),
    # gathers/scatters: index arithmetic plus at most one add per element
    "index": (
        "embedding",
        "index",
        "index_select",
        "index_put",
        "index_put_",
        "_index_put_impl_",
        "index_add",
        "index_add_",
        "index_copy",
        "index_copy_",
        "gather",
        "scatter",
        "scatter_",
        "scatter_add",
        "scatter_add_",
        "scatter_reduce",
        "masked_scatter",
        "masked_scatter_",
        "masked_select",
        "nonzero",
        "nonzero_static",
        "one_hot",
        "take",
        "take_along_dim",
        "bincount",
        "histc",
        "unique",
        "_unique2",
        "unique_consecutive",
        "searchsorted",
        "bucketize",
        "histogram",
    ),
}
ALLOWED_OPS: dict[str, str] = {name: cat for cat, names in _ALLOWED.items() for name in names}


def op_base_name(func: Any) -> str:
    """'aten.addmm.default' -> 'addmm'; 'transformers.grouped_mm_fallback.default' -> 'grouped_mm_fallback'."""
    packet = getattr(func, "_overloadpacket", func)
    return str(getattr(packet, "__name__", packet)).split(".")[-1]


def op_namespace(func: Any) -> str:
    return str(getattr(func, "namespace", "aten"))


def op_full_name(func: Any) -> str:
    """The overload's qualified name, e.g. 'aten.mm.default'."""
    return str(func)


# Names that match a fragment above but are known not to be tensor-core work.
NAME_FALSE_POSITIVES = frozenset({"upsample_linear1d"})


def _is_suspicious(base: str) -> bool:
    b = base.lower().strip("_")
    return b not in NAME_FALSE_POSITIVES and any(frag in b for frag in SUSPICIOUS_FRAGMENTS)


def classify(func: Any, has_formula: bool, touches_float: bool) -> str:
    """'counted' | 'uncounted' | 'non_float' | 'allowed:<category>' (see module docstring)."""
    if has_formula:
        return "counted"
    base = op_base_name(func)
    if _is_suspicious(base):
        return "uncounted"
    if not touches_float:
        return "non_float"
    name = base[:-1] if base.endswith("_") and base[:-1] in ALLOWED_OPS else base
    if op_namespace(func) == "aten" and name in ALLOWED_OPS:
        return "allowed:" + ALLOWED_OPS[name]
    return "uncounted"


def _touches_float(args: Any, kwargs: Any, out: Any) -> bool:
    leaves, _ = tree_flatten((args, kwargs, out))
    return any(isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()) for x in leaves)


@dataclass
class OpStats:
    calls: int = 0
    flops: int = 0
    klass: str = ""


@dataclass
class AuditLog:
    """Everything the audit saw; filled by `AuditMode`."""

    ops: dict[str, OpStats] = field(default_factory=dict)  # full op name -> stats (whole run)
    total_flops: int = 0
    no_convention: list[str] = field(default_factory=list)  # float ops without an elementwise convention
    alias_mismatch: list[str] = field(default_factory=list)  # ops returning a view their schema did not announce

    def uncounted(self) -> list[str]:
        return sorted(name for name, st in self.ops.items() if st.klass == "uncounted")


class AuditMode(TorchDispatchMode):
    """Records every op, evaluates its formula, meters it, and charges the result via ``charge(op_name, measured)``."""

    def __init__(
        self,
        registry: dict[Any, Any],
        charge: Callable[[str, Any], None],
        log: AuditLog,
        meter: Any = None,
        execute: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any] | None = None,
    ) -> None:
        """``meter``: a `vendor_shim.op_meter.OpMeter` (every other metric of the op; default: one that knows no
        weights).  ``execute(func, args,
        kwargs)`` runs the op (default: the kernel itself; `vendor_shim.hollow` answers counted ops with shapes
        only).  Being the bottom mode, the audit sees the op either way."""
        super().__init__()
        self.execute = execute
        self.registry = registry
        self.charge = charge
        self.log = log
        if meter is None:
            from vendor_shim.op_meter import OpMeter  # op_meter reads this module's categories

            meter = OpMeter(weights=frozenset())
        self.meter = meter
        self._names: dict[Any, str] = {}  # str(func) is slow and asked ~1,000 times per decoder forward

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs) if self.execute is None else self.execute(func, args, kwargs)
        packet = func._overloadpacket
        formula = self.registry.get(packet)
        name = self._names.get(func)
        if name is None:
            name = self._names[func] = op_full_name(func)
        st = self.log.ops.get(name)
        if st is None:
            st = self.log.ops[name] = OpStats(
                klass=classify(func, formula is not None, _touches_float(args, kwargs, out))
            )
        elif st.klass == "non_float" and _touches_float(args, kwargs, out):  # same op, now on floats
            st.klass = classify(func, formula is not None, True)
        st.calls += 1
        flops = 0
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            st.flops += flops
            self.log.total_flops += flops
        self.charge(name, self.meter.measure(func, name, args, kwargs, out, flops))
        return out


def ops_by_class(log: AuditLog) -> dict[str, dict[str, int]]:
    """op name -> {'calls', 'flops', 'class'} for the trace."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for name, st in sorted(log.ops.items()):
        out[name] = {"calls": st.calls, "flops": st.flops, "class": st.klass}
    return dict(out)
