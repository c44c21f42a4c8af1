"""DeepEncoder V2's second half (DeepSeek-OCR 2): a Qwen2-0.5B-shaped transformer used as a vision
encoder over [SAM tokens; learnable queries] (docs/deepseek-ocr2-facts.md, "DeepEncoder V2").

Official: deepencoderv2.py `CustomQwen2Decoder` / `Qwen2Decoder2Encoder` (transformers 4.46.3
`Qwen2Model` with `_attn_implementation="sdpa"`); transformers 5.x: `DeepseekOcr2VisionModel`
(`vision_encoder` + `query_768_resolution` / `query_1024_resolution`). Per view of n = grid^2 SAM
tokens: n learnable queries are appended, L = 2n tokens go through every layer with a mask --
bidirectional over the image tokens, causal over the queries -- and SDPA computes the full L x L
product (masked entries are computed, not skipped); only the n query outputs are kept.

A layer is a Qwen2 decoder layer: the decoder's `DecoderLayer` with `MhaAttention` (q/k/v with bias, o
without; GQA: the keys and values repeated to every head before SDPA, which gets the mask) and a dense
`SwiGluMlp`, called over the batch of views without a cache of its own to grow (`AttentionCall`).
Rotary tables once per encoder forward: an elementwise product in transformers 5, one
``inv_freq @ position_ids`` bmm of 2*(D/2)*L (counted) in 4.46 (profile ``rope``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from analytic.costs import Cost, add_stack, sub
from analytic.layers.common import ConfigError, VisionCall, VisionEncoder, layer_stack, sdpa_output_copies
from analytic.layers.decoder import (
    ROTARY_PER_LAYER,
    AttentionCall,
    DecoderLayer,
    MhaAttention,
    SwiGluMlp,
    rms_norm,
    rotary_tables_elementwise,
    rotary_tables_matmul,
)
from core.profiles import ImplProfile

I64 = 8  # position ids, block ids and index tensors are int64


def bool_block_overlay_mask(c: Cost, path: str | None, views: int, n: int) -> int:
    """transformers 5 `DeepseekOcr2VisionEncoder.forward` + `masking_utils.sdpa_mask` over L = 2n positions, op by
    op (int64 indices; bool results one byte per pair):

    - ``block_sequence_ids = torch.full((B, L), -1)`` and ``[:, :n] = 0`` (on the meta device: a 0-d value tensor,
      then copy_ into the slice);
    - arange(B), arange(1) for the heads, arange(L) + 0 for the queries and for the keys;
    - ``or_masks``: new_zeros(()) | causal ``kv_idx <= q_idx`` (L x L, no batch), then | the blockwise overlay:
      two gathers of the block ids (B x L each), ``q_group == kv_group`` (B x L x L), ``q_group >= 0`` (B x L) and
      their ``&`` (B x L x L).
    Liveness: the block ids live through the forward; the transients at the overlay's ``&`` (the causal part, the
    gathered ids, the comparison and the product) are the build's high-water mark.  Returns the bytes of the
    (B, 1, L, L) bool mask, held through the forward (SDPA reads it in every layer)."""
    b, seq = views, 2 * n
    sq, bsq, bl = seq * seq, views * seq * seq, views * seq
    c.traffic(sub(path, "block_ids"), "full", 0, bl * I64)
    c.hold(bl * I64)
    c.traffic(sub(path, "block_ids_fill"), "copy_", I64, I64 + b * n * I64)
    c.traffic(sub(path, "mask_aranges"), "arange", 2 * seq * I64, b * I64 + I64 + 4 * seq * I64)  # + the offsets
    reads = 1 + sq + 2 * seq * I64  # causal part: |, <=
    reads += 2 * (bl * I64 + b * I64 + seq * I64) + 2 * bl * I64 + bl * I64  # gathers, ==, >=
    reads += bsq + bl + sq + bsq  # &, final |
    writes = 1 + 2 * sq + 2 * bl * I64 + bl + 3 * bsq
    c.traffic(sub(path, "mask_build"), "bitwise_or", reads, writes)
    indices = b * I64 + I64 + 2 * seq * I64
    c.spike(indices + sq + 2 * bl * I64 + bsq + bl + bsq)
    c.hold(bsq)
    return bsq


def float_index_put_mask(c: Cost, path: str | None, views: int, n: int, db: int) -> int:
    """Official deepencoderv2.py `_create_custom_4d_mask` over L = 2n positions, per view b (a Python loop), op by
    op: ``torch.full((L, L), min)`` in the model's dtype; ``(type_ids == 0).nonzero()`` and ``(type_ids == 1)
    .nonzero()`` (a bool per position, then n int64 positions each); ``mask[image[:, None], image] = 0.0`` (an
    index_put_ of n x n elements from one value); then for each of the n queries i two index_put_: its row over the
    n image columns and over queries 0..i; finally ``torch.stack`` of the views (and a view adding the head dim).
    Every index_put_ reads its index tensors (a 0-d query position: 8 bytes) and its 0-d value.  Liveness: the
    per-view masks accumulate in a list and live next to their stack (with the last view's positions); returns the
    bytes of the stacked (B, 1, L, L) mask, held through the forward."""
    seq, sq = 2 * n, (2 * n) ** 2
    tri = n * (n + 1) // 2  # queries 0..i, summed over i
    reads = 2 * seq * I64 + 2 * seq  # the two comparisons, the two nonzero
    reads += 2 * n * I64 + db  # the image block: both index tensors and the value
    reads += n * (I64 + n * I64 + db) + n * (I64 + db) + tri * I64  # the query rows
    writes = sq * db + 2 * seq + 2 * n * I64 + n * n * db + n * n * db + tri * db
    c.traffic(sub(path, "mask_build"), "index_put_", views * reads, views * writes)
    c.copy(sub(path, "mask_stack"), "stack", views * sq, db)
    c.spike(2 * views * sq * db + 2 * n * I64)  # the list of masks and their stack, the last view's positions
    c.hold(views * sq * db)
    return views * sq * db


def _no_token_type_ids(c: Cost, path: str | None, views: int, seq: int, previous_tokens: int) -> None:
    """transformers 5: no token_type_ids (the block ids are built with the mask)."""


def _token_type_ids(c: Cost, path: str | None, views: int, seq: int, previous_tokens: int) -> None:
    """Official: token_type_ids = cat([zeros(B, n), ones(B, n)]) (int64), bound through the forward; the inner model
    keeps it as an attribute (`_current_token_type_ids`) until its next call, so the previous call's die here."""
    ids = views * seq * I64
    c.traffic(sub(path, "token_type_ids"), "cat", ids, 2 * ids)
    c.spike(2 * ids)
    c.hold(ids)
    c.release(2 * previous_tokens * I64)  # the previous call's ids, replaced as the attribute


def _overlay_mask(c: Cost, path: str | None, views: int, n: int, db: int) -> int:
    """The bool mask, whatever the dtype."""
    return bool_block_overlay_mask(c, path, views, n)


@dataclass(frozen=True)
class _EncoderMask:
    """One `ImplProfile.encoder_mask` mode: the token_type_ids it builds first (after the query cat), the mask
    (after the position ids; returns its bytes) and whether a call leaves its ids bound to the model."""

    token_type_ids: Callable[[Cost, str | None, int, int, int], None]
    build: Callable[[Cost, str | None, int, int, int], int]
    keeps_ids: bool


_ENCODER_MASKS = {
    "bool_block_overlay": _EncoderMask(_no_token_type_ids, _overlay_mask, False),
    "float_index_put": _EncoderMask(_token_type_ids, float_index_put_mask, True),
}

# ImplProfile.rope -> the rotary tables, once per encoder forward (4.46 Qwen2Model: one rotary module call, a bmm)
_ENCODER_ROTARY: dict[str, Callable[[Cost, str | None, int, int, int], int]] = {
    "per_layer_matmul": rotary_tables_matmul,
    "once_elementwise": rotary_tables_elementwise,
}


@dataclass(frozen=True)
class Qwen2QueryEncoder(VisionEncoder):
    """The encoder stack with its learnable query tables (one per supported SAM grid)."""

    stage: ClassVar[str] = "qwen2_encoder"

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None
    intermediate_size: int
    query_counts: tuple[int, ...]  # rows of the learnable query tables (query_768: 144, query_1024: 256)

    def __post_init__(self) -> None:
        object.__setattr__(self, "query_counts", tuple(self.query_counts))
        if self.num_layers < 0 or self.hidden_size <= 0 or self.num_heads <= 0 or self.num_kv_heads <= 0:
            raise ConfigError("vision.qwen2_encoder: hidden_size and heads must be positive, num_layers >= 0")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"vision.qwen2_encoder.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}: set vision.qwen2_encoder.head_dim"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"vision.qwen2_encoder.num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads} (GQA repeats each kv head)"
            )
        h = self.hidden_size
        hd = self.head_dim if self.head_dim is not None else h // self.num_heads
        attn = MhaAttention(h, self.num_heads, self.num_kv_heads, hd, bias=True, o_bias=False)
        layer = DecoderLayer(attn, SwiGluMlp(h, self.intermediate_size), h)
        object.__setattr__(self, "_layer", layer)

    @property
    def layer(self) -> DecoderLayer:
        """One encoder layer (all are alike)."""
        return self._layer  # type: ignore[attr-defined]

    @property
    def head_size(self) -> int:
        return self.layer.attn.head_dim  # type: ignore[union-attr]

    def _forward(self, c: Cost, v: VisionCall) -> int:
        """The [SAM tokens; queries] cat, the mask, the rotary tables, the layers and the final norm; returns the
        query outputs kept per view.  ``v.previous_tokens``: SAM tokens of the previous call (official: the crops),
        whose token_type_ids the official model keeps as an attribute until this call replaces them."""
        batch, profile, db, path = v.batch, v.profile, v.db, v.path
        n = self._query_count(v.grid)
        seq = 2 * n  # [image tokens; queries]
        h, hd = self.hidden_size, self.head_size
        x = batch * seq * h * db
        if profile.encoder_nests_sam:  # SAM's output, allocated inside this stage's root, bound until it returns
            c.hold(batch * n * h * db)
        # cat([sam.flatten(2).transpose(1, 2), queries.expand(B, ...)]): the query table is read once
        c.weight_read(sub(path, "query_table"), "cat", n * h, db)
        c.traffic(sub(path, "cat_queries"), "cat", batch * n * h * db, x)
        c.hold(x)  # the encoder's input, bound by the caller (and the forward) through every layer
        mask_mode = _ENCODER_MASKS[profile.encoder_mask]
        mask_mode.token_type_ids(c, path, batch, seq, v.previous_tokens)
        c.traffic(sub(path, "position_ids"), "arange", 0, seq * I64)  # 4.46: cache_position (position_ids views it)
        c.hold(seq * I64)
        mask = mask_mode.build(c, path, batch, n, db)
        _ENCODER_ROTARY[profile.rope](c, path, seq, hd, db)
        call = AttentionCall(
            views=batch,
            kv="kept" if profile.encoder_kv_cache else "none",
            mask_bytes=mask,
            layer_rotary=False,
            output_copy=sdpa_output_copies(profile, q_contiguous=False),  # q: a strided view of q_proj
        )
        layer = self.layer

        def run(one: Cost, p: str | None) -> None:
            layer.evaluate(one, seq, 0, profile, "sdpa", db, p, None, call)

        add_stack(c, layer_stack(c, path, self.num_layers, run), x)
        rms_norm(c, sub(path, "norm"), batch * seq, h, db)
        return n  # last_hidden_state[:, n:, :]: the query outputs only

    def _query_count(self, grid: int) -> int:
        """The learnable queries for a grid x grid SAM map: one per SAM token, from the table of that size."""
        n = grid * grid
        if n not in self.query_counts:
            raise ConfigError(
                f"a {grid}x{grid} SAM map ({n} tokens) has no learnable query table (the encoder has "
                f"{', '.join(map(str, self.query_counts))}): use a view size the family supports"
            )
        return n

    def params(self) -> int:
        """Parameter count: the two query tables, every layer (two RMSNorms, q/k/v with biases, o, the SwiGLU) and
        the final RMSNorm (the token embedding is deleted: the encoder never sees token ids)."""
        h = self.hidden_size
        return sum(self.query_counts) * h + self.num_layers * self.layer.params() + h

    def buffer_bytes(self, profile: ImplProfile) -> int:
        """Buffers: the rotary inv_freq tables (float32, head_dim / 2): transformers 5 keeps one rotary module with
        inv_freq and its original_inv_freq copy; 4.46.3's Qwen2Model has one and every Qwen2Attention builds its own
        (original_inv_freq is the same tensor there)."""
        table = self.head_size // 2 * 4
        return (self.num_layers + 1) * table if ROTARY_PER_LAYER[profile.rope] else 2 * table

    def bound_output_bytes(self, batch: int, grid: int, profile: ImplProfile, db: int, last: bool) -> int:
        """Bytes a call leaves to its caller: the whole (B, 2n, d) last hidden state (the query outputs are a view of
        it) and, for the last call (official), its token_type_ids, which the model keeps as an attribute (an
        earlier call's die in the next one)."""
        n = grid * grid
        ids = batch * 2 * n * I64 if last and _ENCODER_MASKS[profile.encoder_mask].keeps_ids else 0
        return batch * 2 * n * self.hidden_size * db + ids

    def projector_reads_sam_features(self) -> bool:
        """The projector reads the query outputs themselves: nothing is fused with SAM's features."""
        return False

    def summary(self) -> dict[str, object]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_size,
            "intermediate_size": self.intermediate_size,
            "query_counts": list(self.query_counts),
        }

    def projector_rows(self, kept: int) -> int:
        """Rows per view the projector reads: the query outputs `evaluate` kept."""
        return kept

    def projector_input_strided(self, batch: int) -> bool:
        """The projector reads ``last_hidden_state[:, n:, :]`` of a (batch, 2n, C) tensor: a view that flattens to
        rows without a copy only for batch 1 (official and transformers alike)."""
        return batch > 1
