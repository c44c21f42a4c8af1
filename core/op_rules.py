"""Every rule about one aten op, registered once: its audit category, its elementwise convention, its bytes.

Torch-free, so the analytic model, the vendor meter and the coverage audit read the same table.  Each op family
is one `register(...)` call (as `torch.utils.flop_counter` registers one formula per op family); the tables the
readers use (`ALLOWED_OPS`, `ELEMENTWISE`, `GATHERS`, ...) are derived from it at import.

The measured metrics are defined per executed aten op (after the FLOP counter's own decompositions); a stage's
figure is the sum over the ops charged to it, ``peak_bytes`` the maximum (`core.metrics.combine`,
`PEAK_METRICS`).

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

The audit (`vendor_shim.audit`) classifies an op without a tensor-FLOP formula ``allowed:<category>`` when
its base name has a category here; an op registered without one (``category=None``) carries rules for the
meter only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """Why an audit category carries no tensor FLOPs; ``movement``: its ops do no arithmetic (0 elementwise)."""

    why: str
    movement: bool = False


CATEGORIES: dict[str, Category] = {
    "elementwise": Category("pointwise math: O(numel), reported as elementwise_flops by the analytic model"),
    "reduction": Category("reductions and normalisations: O(numel)"),
    "data": Category(
        "casts, fills, random draws, nearest-neighbour resampling, pooling and sorting by index: data is "
        "produced or moved, nothing is computed on it",
        movement=True,
    ),
    "copy_view": Category("pure data movement, views and allocation: no arithmetic", movement=True),
    "interpolation": Category("resampling of position tables: a handful of taps per output element"),
    "index": Category("gathers/scatters: index arithmetic plus at most one add per element", movement=True),
}


@dataclass(frozen=True)
class OpRule:
    """What one aten op base name is charged (module docstring)."""

    category: str | None  # audit category; None: not on the allow-list (a tensor op, or a meter-only stem)
    elementwise: tuple[int, str] | None  # (FLOPs per element, basis "out" | "in"); None: no convention
    alias_by_behaviour: bool  # schema says "new tensor", the kernel returns a view: no traffic
    gather: bool  # reads from its table exactly the rows it writes
    layout_only: bool  # takes a tensor for its shape, dtype and device only: reads none of its data
    overwrites: bool  # in place, overwrites its destination without reading it
    bias_arg: int | None  # a tensor op whose kernel adds the bias at this argument position: 1 FLOP per output


RULES: dict[str, OpRule] = {}


def register(
    category: str | None,
    names: str,
    *,
    flops: int | None = None,
    basis: str = "out",
    alias_by_behaviour: bool = False,
    gather: bool = False,
    layout_only: bool = False,
    overwrites: bool = False,
    bias_arg: int | None = None,
) -> None:
    """One op family (``names``: base names, whitespace-separated) under one set of rules; each name once."""
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown audit category {category!r}")
    if flops is not None and category is not None and CATEGORIES[category].movement:
        raise ValueError(f"{category!r} moves data only: its ops have no elementwise convention")
    if basis not in ("out", "in"):
        raise ValueError(f"basis must be 'out' or 'in', not {basis!r}")
    rule = OpRule(
        category,
        None if flops is None else (flops, basis),
        alias_by_behaviour,
        gather,
        layout_only,
        overwrites,
        bias_arg,
    )
    for name in names.split():
        if name in RULES:
            raise ValueError(f"op {name!r} registered twice")
        RULES[name] = rule


# --- elementwise: pointwise math
register(
    "elementwise",
    "add sub rsub mul div true_divide neg pow rsqrt sqrt reciprocal exp exp2 log log1p expm1 abs clamp clamp_min"
    " clamp_max where masked_fill maximum minimum floor ceil round trunc sign remainder fmod frac floor_divide"
    " square relu threshold hardtanh leaky_relu sin cos tanh erf eq ne lt le gt ge nan_to_num isnan isinf isfinite",
    flops=1,
)
register("elementwise", "sigmoid", flops=3)  # exp, add, reciprocal
register("elementwise", "silu", flops=4)  # sigmoid + mul
register("elementwise", "gelu", flops=8)  # erf form
register("elementwise", "addcmul addcdiv lerp", flops=2)
register(  # no convention yet: on floating tensors the trace lists them as such
    "elementwise",
    "logical_not logical_and logical_or logical_xor bitwise_not bitwise_and bitwise_or bitwise_xor"
    " elu softplus mish hardswish hardsigmoid gelu_backward",
)

# --- reduction: reductions, softmax and normalisations, per element of the first input
register("reduction", "sum mean amax amin max min argmax argmin prod cumsum topk any all", flops=1, basis="in")
register("reduction", "var std var_mean std_mean norm linalg_vector_norm", flops=2, basis="in")
register("reduction", "_softmax _safe_softmax softmax _log_softmax log_softmax", flops=5, basis="in")
register("reduction", "native_layer_norm layer_norm native_group_norm group_norm", flops=5, basis="in")
register("reduction", "_fused_rms_norm rms_norm", flops=4, basis="in")
register("reduction", "cumprod count_nonzero logsumexp native_batch_norm _native_batch_norm_legit_no_training")

# --- data: produced or moved, nothing computed
register("data", "fill zero", overwrites=True)
register("data", "lift_fresh", alias_by_behaviour=True)
register("data", "randn_like rand_like", layout_only=True)
register(
    "data",
    "_to_copy alias detach dropout native_dropout bernoulli uniform normal random exponential randn rand randint"
    " randperm upsample_nearest1d upsample_nearest2d _upsample_nearest_exact2d max_pool2d_with_indices sort argsort",
)

# --- copy_view: views, copies, allocation, metadata
register("copy_view", "_unsafe_view _reshape_alias", alias_by_behaviour=True)
register("copy_view", "copy", overwrites=True)
register("copy_view", "_unsafe_index", gather=True)
register(
    "copy_view",
    "empty_like zeros_like ones_like full_like new_empty new_zeros new_ones new_full new_empty_strided",
    layout_only=True,
)
register(
    "copy_view",
    "view reshape permute transpose t expand clone contiguous copy_ slice select unsqueeze squeeze flatten"
    " unflatten cat stack split split_with_sizes chunk unbind narrow as_strided empty empty_strided zeros ones full"
    " constant_pad_nd pad repeat repeat_interleave roll flip tril triu diagonal unfold resize_ set_ pixel_shuffle"
    " tile movedim swapaxes view_as expand_as alias_copy view_copy permute_copy slice_copy select_copy"
    " unsqueeze_copy squeeze_copy transpose_copy t_copy expand_copy lift detach_ _local_scalar_dense item"
    " scalar_tensor arange linspace _assert_async _assert_tensor_metadata sym_size sym_stride sym_numel"
    " sym_storage_offset size stride numel dim is_contiguous storage_offset is_same_size"
    " _has_compatible_shallow_copy_type resolve_conj resolve_neg _conj conj real",
)

# --- interpolation: taps per output element (pooling: per input element)
register("interpolation", "upsample_bicubic2d _upsample_bicubic2d_aa", flops=32)
register("interpolation", "upsample_bilinear2d _upsample_bilinear2d_aa", flops=4)
register("interpolation", "upsample_linear1d", flops=2)
register("interpolation", "avg_pool2d adaptive_avg_pool2d adaptive_avg_pool1d", flops=1, basis="in")
register("interpolation", "grid_sampler_2d")

# --- index: gathers and scatters
register("index", "embedding index index_select gather take take_along_dim", gather=True)
register("index", "index_put index_copy masked_scatter", overwrites=True)
register(
    "index",
    "index_put_ _index_put_impl_ index_add index_add_ index_copy_ scatter scatter_ scatter_add scatter_add_"
    " scatter_reduce masked_scatter_ masked_select nonzero nonzero_static one_hot bincount histc unique _unique2"
    " unique_consecutive searchsorted bucketize histogram",
)

# --- rules for the meter only (not on the allow-list)
register(None, "_index_put_impl", overwrites=True)  # the stem the meter looks up for _index_put_impl_
register(None, "addmm baddbmm", bias_arg=0)
register(None, "convolution _convolution", bias_arg=2)

# --- the tables the readers use, derived from the rules above
ALLOWED_OPS: dict[str, str] = {n: r.category for n, r in RULES.items() if r.category is not None}
MOVEMENT = tuple(name for name, cat in CATEGORIES.items() if cat.movement)
ELEMENTWISE: dict[str, tuple[int, str]] = {n: r.elementwise for n, r in RULES.items() if r.elementwise is not None}
BIAS_IN_KERNEL: dict[str, int] = {n: r.bias_arg for n, r in RULES.items() if r.bias_arg is not None}
ALIAS_BY_BEHAVIOUR = frozenset(n for n, r in RULES.items() if r.alias_by_behaviour)
GATHERS = frozenset(n for n, r in RULES.items() if r.gather)
LAYOUT_ONLY = frozenset(n for n, r in RULES.items() if r.layout_only)
OVERWRITES = frozenset(n for n, r in RULES.items() if r.overwrites)

ATTENTION_SOFTMAX = ELEMENTWISE["_softmax"][0]  # per query x key score, scale included: the softmax convention
ATTENTION_MASK = 1  # per score, when a mask or is_causal applies


def is_movement(base: str) -> bool:
    """The op's audit category moves data only: 0 elementwise FLOPs by definition."""
    return ALLOWED_OPS.get(base) in MOVEMENT


def elementwise_flops(base: str, out_elems: int, in_elems: int) -> int | None:
    """FLOPs of one arithmetic op under the conventions above; None when the op has no convention (ops of the
    `MOVEMENT` categories never get here)."""
    rule = ELEMENTWISE.get(base)
    if rule is None:
        return None
    per, basis = rule
    return per * (out_elems if basis == "out" else in_elems)
