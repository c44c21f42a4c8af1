"""DeepSeek-V2 decoder as DeepSeek-OCR configures it: MHA with RoPE (or MLA), dense SwiGLU on the
first layers, MoE (router, top-k routed experts, shared experts) on the rest (both MLPs: `mlp.py`),
RMSNorm, lm_head.  Each profile mode the attention and the forward depend on is a small term in a
table keyed by the mode (`_CAUSAL_MASKS`, `_KV_MODES`, `_KERNELS`, `_EAGER_PROBS`, ...).

One forward = `q_len` new tokens attending over `past + q_len` keys (prefill: past 0; decode
step t: q_len 1, past prefill_len + t - 1). Code locations each term mirrors:

- official: modeling_deepseekv2.py (`DeepseekV2DecoderLayer`, `DeepseekV2MLP`, `MoEGate`,
  `DeepseekV2MoE.moe_infer`, `DeepseekV2Attention` for MLA) and, for use_mla=false,
  transformers 4.46 `LlamaAttention` (modeling_llama.py) with its per-layer `LlamaRotaryEmbedding`.
- hf: transformers models/unlimited_ocr/modeling_unlimited_ocr.py (`UnlimitedOcrTextAttention`,
  `UnlimitedOcrTextMLP`, `UnlimitedOcrTextTopkRouter`, `UnlimitedOcrTextExperts` via
  integrations/moe.py, `UnlimitedOcrTextModel` computing RoPE once per forward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analytic.costs import EW, Cost, add_stack, causal_pairs, sub
from analytic.layers.common import F32, ConfigError, group
from analytic.layers.mlp import (  # MoeMlp, SwiGluMlp and the bookkeeping are also imported from here
    ROUTER_WEIGHT_FLOAT32,
    MoeMlp,
    SwiGluMlp,
    _moe_infer_bookkeeping,  # noqa: F401
)
from core.profiles import ImplProfile, ProfileError


def rms_norm(c: Cost, path: str | None, rows: int, width: int, db: int) -> None:
    """RMSNorm (both implementations): x.to(float32), pow, mean, + eps, rsqrt, x * rsqrt, .to(dtype), weight * x.
    FLOPs 4 per element + 2 per row; the casts exist only when the model's dtype is not float32.  Liveness: the
    output is held."""
    n, cast = rows * width, db != F32
    reads = n * db * cast + 3 * n * F32 + 3 * rows * F32 + n * F32 * cast + n * db
    writes = n * F32 * cast + 2 * n * F32 + 3 * rows * F32 + n * db * cast + n * db
    c.elementwise(path, "rmsnorm", n, EW["rmsnorm"], db, weight_elems=width, traffic=(reads, writes))
    c.elementwise_flops += 2 * rows
    # liveness: two float32 rows-by-width tensors at once (the float32 input and its square, then the scaled one
    # and, in the dtype, its cast and the weighted output); the output is held (the caller releases it)
    c.spike(2 * n * F32)
    c.hold(n * db)


def eager_softmax_traffic(scores: int, mask: int, db: int) -> tuple[int, int]:
    """Bytes of scale (mul/div), + mask, softmax(dtype=float32) and .to(dtype) over `scores` scores; the mask
    (q x keys) is broadcast over the heads."""
    cast = db != F32  # then softmax's input is a float32 copy and its output is cast back
    reads = 2 * scores * db + mask * db + scores * F32 + (scores * db + scores * F32) * cast
    writes = 2 * scores * db + scores * F32 + (scores * F32 + scores * db) * cast
    return reads, writes


def causal_mask_traffic(q: int, keys: int, db: int) -> tuple[int, int]:
    """Bytes (read, written) of one transformers 5 `create_causal_mask` for the eager attention, op by op:
    `sdpa_mask`'s aranges over the batch (1), the heads (1), the q positions and the keys (int64), each position
    range plus its offset (an add), ``kv_idx <= q_idx`` (q x keys bools), then `eager_mask`'s 0-d zero and
    minimum of the dtype and ``torch.where(mask, 0, min)`` (q x keys in the dtype)."""
    i64, qk, positions = 8, q * keys, q + keys
    reads = 2 * positions * i64 + qk + 2 * db  # the adds read the aranges, <= reads both, where its three inputs
    writes = 2 * i64 + 2 * positions * i64 + qk + 2 * db + qk * db
    return reads, writes


def reference_sliding_mask_traffic(q: int, keys: int, db: int) -> tuple[int, int]:
    """Bytes (read, written) of transformers 5 `create_reference_sliding_window_causal_mask` (DeepSeek-OCR's second
    mask) for the eager attention, op by op.  Its mask function -- (sliding window AND causal) OR (causal AND
    inside the prefill) -- runs under vmap, so each comparison is one op over (q, keys) and each constant of
    `and_masks` / `or_masks` a tensor of q bools: the four aranges and two offset adds of `sdpa_mask`;
    new_zeros(()) and two new_ones(()) (q bytes each); ``q_idx - window`` and ``kv_idx - kv_offset`` (int64);
    ``kv_idx > q_idx - window``, ``kv_idx - kv_offset < prefill_length`` (keys bools) and two ``kv_idx <= q_idx``;
    four & and two | over (q, keys) (each reading a q-sized or keys-sized constant where one takes part);
    `eager_mask`'s 0-d zero and minimum and its ``torch.where``."""
    i64, qk, positions = 8, q * keys, q + keys
    reads = 5 * positions * i64 + keys * i64  # adds, subs, >, 2 x <= read the positions; < reads the shifted keys
    reads += 3 * q + keys + 8 * qk  # &: q + qk, 2 qk, q + qk, qk + keys; |: q + qk, 2 qk
    reads += qk + 2 * db  # where
    writes = 2 * i64 + 3 * positions * i64  # aranges (batch, heads, positions), adds, subs
    writes += 3 * q + keys + 9 * qk  # the constants, <, and >, 2 x <=, 4 x &, 2 x |
    writes += qk * db + 2 * db  # where, its zero and minimum
    return reads, writes


def prepare_4d_mask_traffic(q: int, keys: int, db: int) -> tuple[int, int]:
    """Bytes (read, written) of transformers 4.46 `_prepare_4d_causal_attention_mask` given the 2-D int64
    attention mask of `keys` positions (AttentionMaskConverter.to_4d), op by op:

    - q > 1, `_make_causal_mask`: torch.full((q, q), min) in float32, arange(q) and + 1 (int64), the `<` of both
      (q x q bool), masked_fill_ in place (reads the mask and the bool), .to(dtype) when not float32, and when
      keys > q a cat with zeros (q x past) in front;
    - `_expand_mask`: mask[:, None, None, :].expand(1, 1, q, keys).to(dtype) (reads the keys int64 once), 1.0 - x,
      .to(torch.bool), masked_fill (q x keys each);
    - q > 1: expanded.bool() and causal_4d_mask.masked_fill(that, min)."""
    i64, f32, qk = 8, 4, q * keys
    reads = writes = 0
    if q > 1:
        qq = q * q
        writes += qq * f32 + 2 * q * i64 + qq  # full, arange, + 1, <
        reads += q * i64 + 2 * q * i64  # + 1 reads the arange, < reads both
        reads += qq * f32 + qq  # masked_fill_ (in place)
        writes += qq * f32
        if db != f32:  # mask.to(dtype)
            reads += qq * f32
            writes += qq * db
        past = keys - q
        if past > 0:  # cat([zeros(q, past), mask], -1)
            writes += q * past * db + qk * db
            reads += q * past * db + qq * db
    reads += keys * i64 + 3 * qk * db + qk  # .to(dtype), 1.0 - x, .to(bool), masked_fill (+ the bool)
    writes += 3 * qk * db + qk
    if q > 1:  # .bool() of the expanded mask, masked_fill of the causal mask
        reads += 2 * qk * db + qk
        writes += qk + qk * db
    return reads, writes


def rotary_tables_elementwise(c: Cost, path: str | None, positions: int, hd: int, db: int) -> int:
    """transformers 5 rotary module, once per forward: position_ids[..., None].float() * inv_freq (an elementwise
    product over hd / 2 columns; inv_freq is a buffer: weight bytes), cat(freqs, freqs), cos() and sin(), each
    scaled, then both cast to the dtype when it is not float32.  Liveness: the float32 freqs, their cat and the
    tables live together (the last scaled one next to its unscaled input); returns the bytes of cos and sin, which
    the caller holds through the forward."""
    c.elementwise(
        sub(path, "rotary_freqs"), "mul", positions * hd // 2, EW["mul"], 4,
        traffic=(positions * 12, positions * 4 + positions * hd * 2),
    )  # fmt: skip
    c.weight_read(sub(path, "inv_freq"), "mul", hd // 2, F32)
    cast = db != F32
    emb = positions * hd
    traffic = (5 * emb * F32 + 2 * emb * F32 * cast, 5 * emb * F32 + 2 * emb * db * cast)
    c.elementwise(sub(path, "rotary_emb"), "sincos", emb, EW["sincos"] + 2 * EW["mul"], 4, traffic=traffic)
    c.spike(emb // 2 * F32 + 4 * emb * F32)
    c.hold(2 * emb * db)
    return 2 * emb * db


def rotary_tables_matmul(c: Cost, path: str | None, positions: int, hd: int, db: int) -> int:
    """transformers 4.46 rotary module (LlamaRotaryEmbedding / Qwen2RotaryEmbedding): freqs = inv_freq_expanded
    (1, D/2, 1) @ position_ids_expanded (1, 1, S), a bmm (counted), whatever the batch; then
    position_ids.float() (int64 -> float32), cat(freqs, freqs), cos(), sin(), each scaled by attention_scaling
    (float32), and cos/sin .to(dtype) when the dtype is not float32.  Liveness as `rotary_tables_elementwise`;
    returns the bytes of cos and sin, which the caller holds."""
    c.bmm(sub(path, "rotary_emb"), "matmul_inv_freq_position_ids", 1, hd // 2, 1, positions, db=4)
    c.weight_bytes += hd // 2 * F32  # the bmm reads the inv_freq buffer (its io: above)
    cast = db != F32
    emb = positions * hd
    reads = positions * 8 + 5 * emb * F32 + 2 * emb * F32 * cast
    writes = positions * F32 + 5 * emb * F32 + 2 * emb * db * cast
    c.elementwise(sub(path, "rotary_sincos"), "sincos", emb, EW["sincos"] + 2 * EW["mul"], 4, traffic=(reads, writes))
    c.spike(emb // 2 * F32 + 4 * emb * F32)
    c.hold(2 * emb * db)
    return 2 * emb * db


# ImplProfile.rope -> whether every attention builds its own rotary tables (4.46 LlamaAttention: a bmm per layer)
# rather than the forward once (transformers 5: UnlimitedOcrTextRotaryEmbedding.forward, elementwise)
ROTARY_PER_LAYER = {"per_layer_matmul": True, "once_elementwise": False}

# ImplProfile.cache_update -> whether the first update (the prefill's) cats too: transformers 5 DynamicLayer.update
# writes the whole cache anew every forward; 4.46's first DynamicCache.update keeps k and v as they are
_FIRST_UPDATE_CATS = {"cat_always": True, "append_then_cat": False}


def _grow_cache(attn: MhaAttention, c: Cost, path: str | None, s: Step, kb: int) -> None:
    """The decoder's KV cache: torch.cat([cache, new]) for K and for V (each cat allocates the grown cache while the
    old one is alive, then the old one dies), then the attention reads the whole cache."""
    nkv, hd, db, keys, past = attn.kv_heads, attn.head_dim, s.db, s.keys, s.past
    cache = nkv * keys * hd * db  # one of the layer's K and V caches after this forward
    if past or _FIRST_UPDATE_CATS[s.profile.cache_update]:
        c.copy(sub(path, "cache_update"), "cat", 2 * nkv * keys * hd, db)
        past_cache = nkv * past * hd * db
        c.hold(cache)
        c.release(past_cache)
        c.hold(cache)
        c.release(past_cache + 2 * kb)  # and the new k, v (the cache now holds them)
    # else (4.46's first update): the new k and v become the cache itself, still held
    c.kv_read(2 * nkv * keys * hd, db)


def _no_cache(attn: MhaAttention, c: Cost, path: str | None, s: Step, kb: int) -> None:
    """No cache is read back: 4.46's first DynamicCache.update keeps k and v as they are ("kept"), or they die with
    the attention ("none")."""


@dataclass(frozen=True)
class _KvMode:
    """One `AttentionCall.kv` mode: the cache's update, and whether the new keys and values die with the attention."""

    update: Callable[[MhaAttention, Cost, str | None, Step, int], None]
    dies_with_attention: bool


_KV_MODES = {
    "cache": _KvMode(_grow_cache, False),
    "kept": _KvMode(_no_cache, False),
    "none": _KvMode(_no_cache, True),
}
KV_MODES = tuple(_KV_MODES)


@dataclass(frozen=True)
class AttentionCall:
    """How a forward calls `MhaAttention`, where a Qwen2-style encoder differs from the decoder.

    views: independent sequences of ``q`` tokens in the batch (the encoder's views; the decoder: 1).
    kv: ``cache`` (the decoder's KV cache: grown, read back, counted as kv_cache_bytes), ``kept`` (a cache object
      keeps this forward's K/V until the forward returns and nothing reads it back: liveness only) or ``none``.
    mask_bytes: SDPA gets a mask tensor of that many bytes (the kernel reads it; 1 per score); None: no mask
      tensor (is_causal when q > 1).
    layer_rotary: the attention computes its own rotary table (4.46 LlamaAttention); None: the profile's rope.
    output_copy: whether transpose(1, 2).contiguous() after the attention copies; None: when q > 1.
    """

    views: int = 1
    kv: str = "cache"
    mask_bytes: int | None = None
    layer_rotary: bool | None = None
    output_copy: bool | None = None

    def __post_init__(self) -> None:
        if self.kv not in KV_MODES:
            raise ProfileError(f"attention kv={self.kv!r} unknown; use one of {', '.join(KV_MODES)}")


DECODER_CALL = AttentionCall()


@dataclass(frozen=True)
class Step:
    """One forward as a layer and its attention see it: ``q`` new tokens per view over ``past`` cached keys, under
    ``profile``, with the attention ``family`` (``sdpa``, or ``bmm``: eager) at ``db`` bytes an element, called as
    ``call`` says."""

    q: int
    past: int
    profile: ImplProfile
    family: str
    db: int
    call: AttentionCall = DECODER_CALL

    @property
    def keys(self) -> int:
        return self.past + self.q

    @property
    def rows(self) -> int:
        return self.call.views * self.q


class StepPart:
    """A decoder layer or its attention: one call signature for one forward (`Step`), the body `_forward`."""

    def evaluate(
        self,
        c: Cost,
        q: int,
        past: int,
        profile: ImplProfile,
        family: str,
        db: int,
        path: str | None,
        hit: int | None = None,
        call: AttentionCall = DECODER_CALL,
    ) -> int | None:
        """Adds one forward of ``call.views`` sequences of q tokens over ``past`` cached keys.  ``hit``: experts that
        got rows in the layer's MoE (None: balanced routing; the attention ignores it)."""
        return self._forward(c, Step(q, past, profile, family, db, call), path, hit)

    def _forward(self, c: Cost, s: Step, path: str | None, hit: int | None) -> int | None:
        raise NotImplementedError


def _sdpa_kernel(attn: MhaAttention, c: Cost, path: str | None, s: Step, masked: bool) -> int:
    """One attention kernel: causal pairs skipped unless it gets a mask tensor (which it reads)."""
    hd, pairs = attn.head_dim, causal_pairs(s.q, s.past)
    c.sdpa(
        sub(path, "sdpa"), s.call.views, attn.heads, s.q, s.keys, hd, hd, db=s.db,
        causal_pairs=None if masked else pairs, masked=masked or s.q > 1, mask_bytes=s.call.mask_bytes or 0,
    )  # fmt: skip
    return 0


def _eager_kernel(attn: MhaAttention, c: Cost, path: str | None, s: Step, masked: bool) -> int:
    """matmul(q, k^T) and matmul(probs, v), full key range, mask added not skipped; returns the bytes of the
    probabilities the layer keeps."""
    views, nh, hd, db, q, keys = s.call.views, attn.heads, attn.head_dim, s.db, s.q, s.keys
    b, pairs, scores = views * nh, causal_pairs(q, s.past), views * nh * q * keys
    c.bmm(sub(path, "qk"), "matmul_qk", b, q, hd, keys, db=db, causal_flops=2 * b * pairs * hd)
    traffic = eager_softmax_traffic(scores, views * q * keys, db)
    c.elementwise(sub(path, "softmax"), "softmax", scores, EW["softmax"] + 2 * EW["add"], db, traffic=traffic)
    # liveness: softmax(x + mask, dtype=float32) holds the sum, its float32 copy (unless float32 already) and the
    # float32 probabilities; then the probabilities cast back, which the layer keeps until it returns
    # (`hidden_states, _ = self.self_attn(...)`)
    cast = db != F32
    c.spike(scores * (db + F32 * cast + F32))
    kept = scores * db
    c.hold(kept)
    c.bmm(sub(path, "av"), "matmul_av", b, q, keys, hd, db=db, causal_flops=2 * b * pairs * hd)
    return kept


@dataclass(frozen=True)
class _Kernel:
    """One attention family: its kernel (returns the bytes it leaves live), and whether it repeats grouped keys and
    values to every head even without a mask tensor."""

    run: Callable[[MhaAttention, Cost, str | None, Step, bool], int]
    repeats_kv: bool


# without a mask transformers passes SDPA enable_gqa, and flash-attn takes grouped heads as they are; eager repeats
_KERNELS = {"sdpa": _Kernel(_sdpa_kernel, False), "bmm": _Kernel(_eager_kernel, True)}


def _probs_dropped(c: Cost, kept: int) -> int:
    """4.46 LlamaAttention.forward: attn_weights = None after o_proj (attentions not output)."""
    c.release(kept)
    return 0


# ImplProfile.eager_probs -> what becomes of the eager probabilities when the attention returns
_EAGER_PROBS: dict[str, Callable[[Cost, int], int]] = {
    "kept_by_layer": lambda c, kept: kept,  # returned as attn_weights, held by the layer until it returns
    "dropped_by_attention": _probs_dropped,
}


@dataclass(frozen=True)
class MhaAttention(StepPart):
    """Llama-style MHA (GQA-capable) with RoPE on the full head dim.  ``bias``: q/k/v (and, unless ``o_bias`` says
    otherwise, o) projections with bias (DeepSeek-V2's attention_bias); Qwen2: q/k/v only."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    bias: bool = False
    o_bias: bool | None = None  # None: as ``bias``

    @property
    def out_bias(self) -> bool:
        return self.bias if self.o_bias is None else self.o_bias

    def _forward(self, c: Cost, s: Step, path: str | None, hit: int | None) -> int:
        """Returns the bytes it leaves live for the layer besides its held output (eager attention's probabilities).
        Liveness: the cache grows by this forward's keys and values (``call.kv``)."""
        h, nh, nkv, hd, db, call = self.hidden, self.heads, self.kv_heads, self.head_dim, s.db, s.call
        rows = s.rows
        qb, kb = rows * nh * hd * db, rows * nkv * hd * db  # the new queries; the new keys (and values)
        c.linear(sub(path, "q_proj"), rows, h, nh * hd, bias=self.bias, db=db)
        c.linear(sub(path, "k_proj"), rows, h, nkv * hd, bias=self.bias, db=db)
        c.linear(sub(path, "v_proj"), rows, h, nkv * hd, bias=self.bias, db=db)
        c.hold(qb + 2 * kb)
        per_layer = ROTARY_PER_LAYER[s.profile.rope] if call.layer_rotary is None else call.layer_rotary
        # LlamaAttention.forward's cos and sin are its locals until it returns
        rotary = rotary_tables_matmul(c, path, s.q, hd, db) if per_layer else 0
        self._rope(c, path, s, qb, kb)
        kv = _KV_MODES[call.kv]
        kv.update(self, c, path, s, kb)
        masked = call.mask_bytes is not None
        kernel = _KERNELS[s.family]
        repeated = self._repeat_kv(c, path, s) if nh != nkv and (kernel.repeats_kv or masked) else 0
        kept = kernel.run(self, c, path, s, masked)  # bytes the attention returns besides its output
        copy = s.q > 1 if call.output_copy is None else call.output_copy
        if copy:  # attn_output.transpose(1, 2).contiguous(): a copy unless one query
            c.copy(sub(path, "attn_output_contiguous"), "clone", rows * nh * hd, db)
            c.spike(2 * qb)  # the output and its contiguous copy
        c.release(repeated)  # the repeated keys and values die with the attention function
        c.hold(qb)  # the attention's output (its contiguous copy), until the attention returns
        c.linear(sub(path, "o_proj"), rows, nh * hd, h, bias=self.out_bias, db=db)
        c.hold(rows * h * db)  # the attention's output
        # the rotated queries, the attention output (and a per-layer rotary table) die when it returns; without a
        # cache, so do the keys and values
        c.release(qb + qb + rotary + (2 * kb if kv.dies_with_attention else 0))
        return _EAGER_PROBS[s.profile.eager_probs](c, kept)

    def _rope(self, c: Cost, path: str | None, s: Step, qb: int, kb: int) -> None:
        """apply_rotary_pos_emb on q and k: per tensor of n, x * cos, neg of half, cat, rotated * sin, add (cos/sin:
        q x hd, broadcast over the views and heads).  Liveness: q * cos, rotate_half(q) (its neg half and cat) and
        * sin live together; the rotated q is kept while k goes through the same; both projections die when it
        returns."""
        hd, db = self.head_dim, s.db
        rotated = s.rows * (self.heads + self.kv_heads) * hd
        rope_traffic = ((11 * rotated // 2 + 4 * s.q * hd) * db, 9 * rotated // 2 * db)
        c.elementwise(sub(path, "apply_rotary"), "rope", rotated, EW["rope"], db, traffic=rope_traffic)
        c.elementwise(sub(path, "rotate_half_neg"), "neg", rotated // 2, EW["mul"], db, traffic=(0, 0))
        c.spike(3 * qb)
        c.hold(qb)
        c.spike(3 * kb)
        c.hold(kb)
        c.release(qb + kb)

    def _repeat_kv(self, c: Cost, path: str | None, s: Step) -> int:
        """repeat_kv (expand + reshape: a copy) of the keys and values to every head; returns their bytes, held until
        the attention function returns."""
        per_head = s.call.views * s.keys * self.head_dim * s.db
        for name in ("repeat_k", "repeat_v"):
            c.traffic(sub(path, name), "clone", self.kv_heads * per_head, self.heads * per_head)
        repeated = 2 * self.heads * per_head
        c.hold(repeated)
        return repeated


@dataclass(frozen=True)
class MlaAttention(StepPart):
    """Multi-head latent attention, absorbed form of the official `DeepseekV2Attention.forward`."""

    hidden: int
    heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    bias: bool = False

    def _forward(self, c: Cost, s: Step, path: str | None, hit: int | None) -> int:
        """Returns 0: nothing but its output and the latent cache's growth stays live."""
        if s.call != DECODER_CALL:
            raise ProfileError("MLA is modelled as the decoder's attention only (one sequence, a KV cache)")
        q, past, profile, db = s.q, s.past, s.profile, s.db
        if not profile.supports_mla:
            raise ProfileError(
                f"profile {profile.name} has no MLA attention: use impl=official or decoder.use_mla=false"
            )
        h, nh = self.hidden, self.heads
        dn, dr, dv, r = self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim, self.kv_lora_rank
        dq = dn + dr
        keys = past + q
        if self.q_lora_rank is None:
            c.linear(sub(path, "q_proj"), q, h, nh * dq, bias=False, db=db)
        else:
            c.linear(sub(path, "q_a_proj"), q, h, self.q_lora_rank, bias=self.bias, db=db)
            rms_norm(c, sub(path, "q_a_layernorm"), q, self.q_lora_rank, db)
            c.linear(sub(path, "q_b_proj"), q, self.q_lora_rank, nh * dq, bias=False, db=db)
        c.linear(sub(path, "kv_a_proj_with_mqa"), q, h, r + dr, bias=self.bias, db=db)
        rms_norm(c, sub(path, "kv_a_layernorm"), q, r, db)
        c.elementwise(sub(path, "apply_rotary"), "rope", q * (nh + 1) * dr, EW["rope"], db)
        c.kv_read(keys * (r + dr), db)
        pairs = causal_pairs(q, past)
        # q_nope @ q_absorb: (B,H,S,dn) @ (H,dn,r)
        c.bmm(sub(path, "q_absorb"), "matmul_q_absorb", nh, q, dn, r, db=db)
        # q_pe @ k_pe^T and q_nope @ compressed_kv^T
        c.bmm(sub(path, "qk_pe"), "matmul_qk_pe", nh, q, dr, keys, db=db, causal_flops=2 * nh * pairs * dr)
        c.bmm(sub(path, "qk_nope"), "matmul_qk_nope", nh, q, r, keys, db=db, causal_flops=2 * nh * pairs * r)
        c.elementwise(sub(path, "softmax"), "softmax", nh * q * keys, EW["softmax"] + 3 * EW["add"], db)
        # einsum('bhql,blc->bhqc', attn, compressed_kv)
        c.bmm(sub(path, "attn_kv"), "einsum_bhql_blc", 1, nh * q, keys, r, db=db, causal_flops=2 * nh * pairs * r)
        # attn_output @ out_absorb^T: (B,H,S,r) @ (H,r,dv)
        c.bmm(sub(path, "out_absorb"), "matmul_out_absorb", nh, q, r, dv, db=db)
        c.linear(sub(path, "o_proj"), q, nh * dv, h, bias=self.bias, db=db)
        c.hold(keys * (r + dr) * db - past * (r + dr) * db)  # the latent cache grows by this forward's rows
        c.hold(q * h * db)  # the attention's output
        return 0


def _params(part: MhaAttention | MlaAttention | SwiGluMlp | MoeMlp) -> int:
    """Parameter count of one attention or MLP (weights, and the biases the config asks for)."""
    if isinstance(part, MhaAttention):
        h, nh, nkv, hd = part.hidden, part.heads, part.kv_heads, part.head_dim
        return 2 * h * nh * hd + 2 * h * nkv * hd + part.bias * (nh * hd + 2 * nkv * hd) + part.out_bias * h
    if isinstance(part, MlaAttention):
        h, nh, r, dr = part.hidden, part.heads, part.kv_lora_rank, part.qk_rope_head_dim
        dq, dn, dv = part.qk_nope_head_dim + dr, part.qk_nope_head_dim, part.v_head_dim
        q = h * nh * dq if part.q_lora_rank is None else h * part.q_lora_rank + part.q_lora_rank * (1 + nh * dq)
        return q + h * (r + dr) + r + r * nh * (dn + dv) + nh * dv * h
    if isinstance(part, SwiGluMlp):
        return 3 * part.hidden * part.intermediate
    h, i = part.hidden, part.expert_intermediate
    return part.n_experts * (3 * h * i + h) + 3 * h * i * part.n_shared


@dataclass(frozen=True)
class DecoderLayer(StepPart):
    attn: MhaAttention | MlaAttention
    mlp: SwiGluMlp | MoeMlp
    hidden: int

    def params(self) -> int:
        """Parameter count: its two RMSNorms, the attention and the MLP."""
        return 2 * self.hidden + _params(self.attn) + _params(self.mlp)

    def _forward(self, c: Cost, s: Step, path: str | None, hit: int | None) -> None:
        """One layer over ``call.views`` sequences of q tokens.  Liveness: the input is live at entry and replaced by
        the output; what stays is the cache growth."""
        h, db = self.hidden, s.db
        rows = s.rows
        n = rows * h * db
        rms_norm(c, sub(path, "input_layernorm"), rows, h, db)
        kept = self.attn._forward(c, s, sub(path, "self_attn"), hit)
        c.release(n)  # the normed input dies when the attention returns
        c.elementwise(sub(path, "residual1"), "add", rows * h, EW["add"], db, reads=2)
        c.hold(n)
        c.release(n)  # the attention's output, replaced by the sum
        rms_norm(c, sub(path, "post_attention_layernorm"), rows, h, db)
        if isinstance(self.mlp, MoeMlp):
            self.mlp.evaluate(c, rows, s.profile, db, sub(path, "mlp"), hit)
        else:
            self.mlp.evaluate(c, rows, db, sub(path, "mlp"))
        c.elementwise(sub(path, "residual2"), "add", rows * h, EW["add"], db, reads=2)
        c.hold(n)  # the layer's output
        # the MLP's output, its normed input, the first residual and the attention's kept probabilities die when the
        # layer returns; the caller drops the layer's input
        c.release(3 * n + kept + n)


def _where_twice_mask(c: Cost, path: str | None, q: int, keys: int, db: int) -> None:
    """transformers 5 masking_utils (DeepSeek-OCR): the full and the reference sliding-window mask.  Liveness: bool
    masks (one byte per pair) while they are built; both float masks live through the forward (the mask mapping
    keeps one per attention type)."""
    full, sliding = causal_mask_traffic(q, keys, db), reference_sliding_mask_traffic(q, keys, db)
    mask_traffic = (full[0] + sliding[0], full[1] + sliding[1])
    c.elementwise(path, "where", 2 * q * keys, EW["mul"], 4, traffic=mask_traffic)
    c.spike(3 * q * keys)
    c.hold(2 * q * keys * db)


def _where_once_mask(c: Cost, path: str | None, q: int, keys: int, db: int) -> None:
    """One `create_causal_mask` (DeepSeek-OCR 2's model)."""
    traffic = causal_mask_traffic(q, keys, db)
    c.elementwise(path, "where", q * keys, EW["mul"], 4, traffic=traffic)
    c.spike(q * keys + q * keys * db)  # the bool mask next to its where
    c.hold(q * keys * db)  # the dtype's mask, through the forward


def _prepare_4d_mask(c: Cost, path: str | None, q: int, keys: int, db: int) -> None:
    """4.46 _prepare_4d_causal_attention_mask: (q x q masked_fill_ + a second masked_fill) if q > 1."""
    extra = q * q + q * keys if q > 1 else 0
    traffic = prepare_4d_mask_traffic(q, keys, db)
    c.elementwise(path, "masked_fill", 2 * q * keys + extra, EW["mul"], db, traffic=traffic)
    c.spike(q * q * db)
    c.hold(q * keys * db)


# ImplProfile.causal_mask -> the (q x keys) mask each decoder forward builds
_CAUSAL_MASKS: dict[str, Callable[[Cost, str | None, int, int, int], None]] = {
    "where_twice": _where_twice_mask,
    "where_once": _where_once_mask,
    "prepare_4d": _prepare_4d_mask,
}


@dataclass(frozen=True)
class Decoder:
    """The decoder stack plus lm_head, built once from the config."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None
    head_dim: int | None
    attention_bias: bool
    intermediate_size: int
    first_k_dense_replace: int
    moe_layer_freq: int
    n_routed_experts: int | None
    num_experts_per_tok: int
    moe_intermediate_size: int
    n_shared_experts: int | None
    use_mla: bool
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    max_position_embeddings: int  # positions the decoder has: prefill_len + decode steps must fit

    def __post_init__(self) -> None:
        mp = self.max_position_embeddings
        if isinstance(mp, bool) or not isinstance(mp, int) or mp <= 0:
            raise ConfigError(f"decoder.max_position_embeddings={mp!r} must be a positive integer")
        if self.num_layers < 0 or self.hidden_size <= 0 or self.num_heads <= 0 or self.vocab_size <= 0:
            raise ConfigError("decoder: hidden_size, num_heads, vocab_size must be positive and num_layers >= 0")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ConfigError(
                f"decoder.num_heads={self.num_heads} is not a multiple of num_kv_heads={kv}: "
                "override decoder.num_kv_heads too"
            )
        hd = self.head_dim or self.hidden_size // self.num_heads
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(f"decoder.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.n_routed_experts and not 0 < self.num_experts_per_tok <= self.n_routed_experts:
            raise ConfigError(
                f"decoder.num_experts_per_tok={self.num_experts_per_tok} must be in 1..n_routed_experts="
                f"{self.n_routed_experts}"
            )
        if self.use_mla:
            attn: MhaAttention | MlaAttention = MlaAttention(
                self.hidden_size,
                self.num_heads,
                self.q_lora_rank,
                self.kv_lora_rank,
                self.qk_nope_head_dim,
                self.qk_rope_head_dim,
                self.v_head_dim,
                self.attention_bias,
            )
        else:
            attn = MhaAttention(self.hidden_size, self.num_heads, kv, hd, self.attention_bias)
        dense = SwiGluMlp(self.hidden_size, self.intermediate_size)
        moe = (
            MoeMlp(
                self.hidden_size,
                self.n_routed_experts,
                self.num_experts_per_tok,
                self.moe_intermediate_size,
                self.n_shared_experts or 0,
            )
            if self.n_routed_experts
            else None
        )
        layers = []
        for i in range(self.num_layers):
            # DeepseekV2DecoderLayer: MoE iff n_routed_experts and i >= first_k_dense_replace and i % freq == 0
            is_moe = moe is not None and i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0
            layers.append(DecoderLayer(attn, moe if is_moe else dense, self.hidden_size))
        object.__setattr__(self, "_layers", tuple(layers))
        object.__setattr__(self, "_kv_heads", kv)
        object.__setattr__(self, "_head_dim", hd)

    @property
    def layers(self) -> tuple[DecoderLayer, ...]:
        return self._layers  # type: ignore[attr-defined]

    def forward(
        self,
        c: Cost,
        q: int,
        past: int,
        profile: ImplProfile,
        attn_impl: str,
        db: int,
        path: str | None = "decoder",
        experts_hit: tuple[int, ...] | None = None,
    ) -> None:
        """One decoder forward over q new tokens with `past` cached keys (lm_head excluded); ``experts_hit``: per
        MoE layer, the experts that got rows (None: balanced routing)."""
        if self.use_mla and attn_impl != "eager":
            # DeepseekV2FlashAttention2 runs the non-absorbed form (kv_b_proj), a different set of matmuls.
            raise ProfileError(
                f"MLA is modelled for the eager (absorbed) path only: use attn_impl=eager, not {attn_impl}"
            )
        family = "bmm" if self.use_mla else profile.decoder_attention_family(attn_impl)
        h = self.hidden_size
        n = q * h * db
        _CAUSAL_MASKS[profile.causal_mask](c, sub(path, "causal_mask"), q, past + q, db)
        if profile.embed_in_decoder:  # embed_tokens gather (no FLOPs): reads the q rows it writes and q int64 ids
            c.write_bytes += q * h * db
            c.read_bytes += q * 8
            c.weight_read(sub(path, "embed_tokens"), "embedding", q * h, db)
            c.hold(n)  # the embeddings, kept by the forward through every layer
        if not ROTARY_PER_LAYER[profile.rope]:  # UnlimitedOcrTextRotaryEmbedding.forward, once per forward
            rotary_tables_elementwise(c, path, q, self._rope_dim, db)  # cos and sin live through the forward
        hits = self._hits(q, experts_hit)
        stack: list[tuple[Cost, int]] = []
        if c.want_records or hits is not None:
            for i, layer in enumerate(self.layers):
                one = Cost(c.want_records)
                layer.evaluate(one, q, past, profile, family, db, sub(path, f"layers.{i}"), (hits or {}).get(i))
                stack.append((one, 1))
        else:
            for layer, count in group(self.layers):
                one = Cost()
                layer.evaluate(one, q, past, profile, family, db, None)
                stack.append((one, count))
        # the first layer's input (the embeddings) is the caller's, or the forward's own (embed_in_decoder)
        add_stack(c, stack, n)
        rms_norm(c, sub(path, "norm"), q, h, db)
        c.release(n)  # the last layer's output, replaced by the normed one

    def _hits(self, q: int, experts_hit: tuple[int, ...] | None) -> dict[int, int] | None:
        """Per MoE layer index, the experts that got rows; None for balanced routing (given as None, or every layer
        at the balanced count: the grouped, fast path gives the same figures)."""
        moe = [i for i, layer in enumerate(self.layers) if isinstance(layer.mlp, MoeMlp)]
        if experts_hit is not None and len(experts_hit) != len(moe):
            raise ProfileError(f"routing gives {len(experts_hit)} MoE layers, the decoder has {len(moe)}")
        if experts_hit is None or all(
            h == min(self.layers[i].mlp.n_experts, q * self.num_experts_per_tok)  # type: ignore[union-attr]
            for i, h in zip(moe, experts_hit, strict=True)
        ):
            return None
        return dict(zip(moe, experts_hit, strict=False))

    @property
    def _rope_dim(self) -> int:
        """The head dim the rotary tables cover (MLA: the rope part of the query/key heads)."""
        return self.qk_rope_head_dim if self.use_mla else self._head_dim  # type: ignore[attr-defined]

    def params(self) -> int:
        """Parameter count: token embedding, every layer (two RMSNorms, attention, MLP), the final norm and the
        untied lm_head."""
        h = self.hidden_size
        return 2 * self.vocab_size * h + h + sum(lay.params() for lay in self.layers)

    def float32_params(self, profile: ImplProfile) -> int:
        """Parameters the implementation keeps in float32 whatever the model's dtype: every MoE router's weight
        when ``profile.router_weight`` is float32 (transformers >= 5.24's `_keep_in_fp32_modules_strict`)."""
        if not ROUTER_WEIGHT_FLOAT32[profile.router_weight]:
            return 0
        return sum(lay.mlp.n_experts * lay.mlp.hidden for lay in self.layers if isinstance(lay.mlp, MoeMlp))

    def cache_bytes_per_token(self, db: int) -> int:
        """KV-cache bytes one position adds over all layers: K and V of every kv head (MLA: the compressed row and
        the rotary key)."""
        if self.use_mla:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * db
        return self.num_layers * 2 * self._kv_heads * self._head_dim * db  # type: ignore[attr-defined]

    def rotary_buffer_bytes(self, profile: ImplProfile) -> int:
        """The rotary tables' inv_freq buffers (float32, head_dim / 2): once with its original_inv_freq copy
        (transformers 5, one rotary module per model), or in every layer (4.46 LlamaAttention builds its own;
        original_inv_freq is the same tensor)."""
        per_table = self._rope_dim // 2 * F32
        return self.num_layers * per_table if ROTARY_PER_LAYER[profile.rope] else 2 * per_table

    def lm_head(self, c: Cost, rows: int, db: int, path: str | None = "lm_head") -> None:
        """lm_head Linear(hidden, vocab) without bias over `rows` positions."""
        c.linear(path, rows, self.hidden_size, self.vocab_size, bias=False, db=db)

    def summary(self) -> dict[str, object]:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self._kv_heads,  # type: ignore[attr-defined]
            "head_dim": self._head_dim,  # type: ignore[attr-defined]
            "use_mla": self.use_mla,
            "dense_layers": sum(1 for layer in self.layers if isinstance(layer.mlp, SwiGluMlp)),
            "moe_layers": sum(1 for layer in self.layers if isinstance(layer.mlp, MoeMlp)),
            "n_routed_experts": self.n_routed_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "moe_intermediate_size": self.moe_intermediate_size,
            "n_shared_experts": self.n_shared_experts,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
        }
