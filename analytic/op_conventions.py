"""What one executed aten op costs beyond its tensor FLOPs: the measured metrics' definitions, stated once.

Torch-free, so the analytic model and the vendor meter read the same table.  Every definition below is
per executed aten op (after the FLOP counter's own decompositions); a stage's figure is the sum over the
ops charged to it (``peak_bytes``: the maximum, see `combine` and `PEAK_METRICS` in `core.metrics`).

- **elementwise_flops**: an op with a tensor-FLOP formula has none, except the bias add a kernel fuses
  (`BIAS_IN_KERNEL`: 1 per output element, as the analytic model's bias add).  Any other op:
  ``ELEMENTWISE[op] = (flops, basis)`` per element of the op's output
  (``"out"``) or of its first tensor input (``"in"``: reductions, normalisations, softmax).  An op
  that moves data only (`MOVEMENT` categories) costs 0 by definition.  An op on floating tensors that
  is in neither table is listed in the trace's coverage as having no convention, never counted as 0.
- **io_bytes**: bytes of every tensor input read plus every tensor output written, for ops that do
  work.  Pure views and aliases move nothing: decided by the op's schema (a return with an alias
  annotation, op not mutable), plus `ALIAS_BY_BEHAVIOUR` for ops whose schema says "new tensor" while
  the kernel returns a view.  A tensor's bytes are its *footprint*: element size x the product of its
  sizes over dimensions with a non-zero stride (an `expand`ed operand is read once).  Gathers
  (`GATHERS`) read the rows they gather: as many bytes from the table as they write.  `LAYOUT_ONLY`
  ops (``empty_like``, ``new_zeros``, ...) read no data of the tensor they are given.  An in-place op
  writes its mutated argument; `OVERWRITES` do not read it first (copy into a slice, fill, index_put).
- **weight_bytes**: the part of the reads that falls on a parameter or buffer (storage identity).
- **activation_bytes**: the bytes written.
- **kv_cache_bytes**: the reads of the decoder's K/V cache tensors (the cache as the forward returns
  it) by ops other than the cache update itself (whose copies count in ``io_bytes`` only).
- **Fused attention** (`F.scaled_dot_product_attention`) is one op whatever kernel the device picks
  (CPU flash, CUDA flash/efficient, or the math decomposition on meta): it reads q, k, v (and the
  mask), writes the output, and costs `ATTENTION_SOFTMAX` elementwise FLOPs per score plus
  `ATTENTION_MASK` per score when a mask (or ``is_causal``) applies.  Its kernel's internals are not
  metered, so every device reports the same figures.  An attention kernel called directly (flash-attn 2's
  ``flash_attn::_flash_attn_forward`` / ``_flash_attn_varlen_forward``, as transformers' ``flash_attention_2``
  calls them) is charged the same way: q, k, v, its masks/biases and its sequence-length tensors read, its
  attention output written (its logsumexp, RNG state and debug outputs are not, as the fused op never
  returns them), softmax (+ mask, causal or local window) per score of every sequence.
- **peak_bytes**: the high-water mark of live tensor bytes while a stage root runs, above the level at
  its entry (tensors allocated by the run, freed when their storage dies; parameters and inputs made
  before the run are not part of it); while a nested stage runs, only the nested stage's peak rises.
"""

from __future__ import annotations

# op base name -> (elementwise FLOPs per element, basis): "out" = output elements, "in" = first input's
ELEMENTWISE: dict[str, tuple[int, str]] = {
    **dict.fromkeys(
        (
            "add",
            "sub",
            "rsub",
            "mul",
            "div",
            "true_divide",
            "neg",
            "pow",
            "rsqrt",
            "sqrt",
            "reciprocal",
            "exp",
            "exp2",
            "log",
            "log1p",
            "expm1",
            "abs",
            "clamp",
            "clamp_min",
            "clamp_max",
            "where",
            "masked_fill",
            "maximum",
            "minimum",
            "floor",
            "ceil",
            "round",
            "trunc",
            "sign",
            "remainder",
            "fmod",
            "frac",
            "floor_divide",
            "square",
            "relu",
            "threshold",
            "hardtanh",
            "leaky_relu",
            "sin",
            "cos",
            "tanh",
            "erf",
            "eq",
            "ne",
            "lt",
            "le",
            "gt",
            "ge",
            "nan_to_num",
            "isnan",
            "isinf",
            "isfinite",
        ),
        (1, "out"),
    ),
    "sigmoid": (3, "out"),  # exp, add, reciprocal
    "silu": (4, "out"),  # sigmoid + mul
    "gelu": (8, "out"),  # erf form
    "addcmul": (2, "out"),
    "addcdiv": (2, "out"),
    "lerp": (2, "out"),
    **dict.fromkeys(("sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "prod", "cumsum"), (1, "in")),
    **dict.fromkeys(("topk", "any", "all"), (1, "in")),
    **dict.fromkeys(("var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm"), (2, "in")),
    **dict.fromkeys(("_softmax", "_safe_softmax", "softmax", "_log_softmax", "log_softmax"), (5, "in")),
    **dict.fromkeys(("native_layer_norm", "layer_norm", "native_group_norm", "group_norm"), (5, "in")),
    **dict.fromkeys(("_fused_rms_norm", "rms_norm"), (4, "in")),
    **dict.fromkeys(("upsample_bicubic2d", "_upsample_bicubic2d_aa"), (32, "out")),
    **dict.fromkeys(("upsample_bilinear2d", "_upsample_bilinear2d_aa"), (4, "out")),
    "upsample_linear1d": (2, "out"),
    **dict.fromkeys(("avg_pool2d", "adaptive_avg_pool2d", "adaptive_avg_pool1d"), (1, "in")),
}
# Audit categories (vendor_shim.audit) whose ops move, index or produce data and do no arithmetic: 0 FLOPs.
MOVEMENT = ("data", "copy_view", "index")

# Tensor ops whose kernel also adds a bias: op -> position of the bias argument; 1 FLOP per output element.
BIAS_IN_KERNEL = {"addmm": 0, "baddbmm": 0, "convolution": 2, "_convolution": 2}

ATTENTION_SOFTMAX = 5  # per query x key score, scale included (as `ELEMENTWISE["_softmax"]`)
ATTENTION_MASK = 1  # per score, when a mask or is_causal applies

# Schema says "returns a new tensor", the kernel returns a view of its input: no traffic.
ALIAS_BY_BEHAVIOUR = frozenset({"_unsafe_view", "_reshape_alias", "lift_fresh"})
# Gathers: read from the table exactly the rows they write.
GATHERS = frozenset({"embedding", "index_select", "index", "gather", "take", "take_along_dim", "_unsafe_index"})
# Ops that take a tensor only for its shape, dtype and device: they read none of its data.
LAYOUT_ONLY = frozenset(
    {
        "empty_like",
        "zeros_like",
        "ones_like",
        "full_like",
        "randn_like",
        "rand_like",
        "new_empty",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_empty_strided",
    }
)
# In-place ops that overwrite their destination without reading it.
OVERWRITES = frozenset({"copy", "fill", "zero", "index_put", "_index_put_impl", "index_copy", "masked_scatter"})


def elementwise_flops(base: str, out_elems: int, in_elems: int) -> int | None:
    """FLOPs of one arithmetic op under the conventions above; None when the op has no convention (ops of the
    `MOVEMENT` categories never get here)."""
    rule = ELEMENTWISE.get(base)
    if rule is None:
        return None
    per, basis = rule
    return per * (out_elems if basis == "out" else in_elems)
