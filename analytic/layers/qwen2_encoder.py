"""DeepEncoder V2's second half (DeepSeek-OCR 2): a Qwen2-0.5B-shaped transformer used as a vision
encoder over [SAM tokens; learnable queries] (docs/deepseek-ocr2-facts.md, "DeepEncoder V2").

Official: deepencoderv2.py `CustomQwen2Decoder` / `Qwen2Decoder2Encoder` (transformers 4.46.3
`Qwen2Model` with `_attn_implementation="sdpa"`); transformers 5.x: `DeepseekOcr2VisionModel`
(`vision_encoder` + `query_768_resolution` / `query_1024_resolution`). Per view of n = grid^2 SAM
tokens: n learnable queries are appended, L = 2n tokens go through every layer with a float (or
bool) mask -- bidirectional over the image tokens, causal over the queries -- and SDPA computes the
full L x L product (masked entries are computed, not skipped); only the n query outputs are kept.

Per layer: RMSNorm; q/k/v (with bias; GQA: k/v to kv_heads * head_dim, repeated to all heads
before SDPA, a data move); RoPE applied elementwise; SDPA; o_proj (no bias); RMSNorm; SwiGLU
(no bias). Final RMSNorm. Rotary frequencies: one `inv_freq @ position_ids` bmm of 2*(D/2)*L
per encoder call (position_ids has batch 1) in transformers 4.46 (profile rope
`per_layer_matmul`, i.e. the matmul rotary class); elementwise, so not counted, in 5.x.
"""

from __future__ import annotations

from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import ConfigError, vision_attention
from analytic.layers.decoder import SwiGluMlp
from analytic.profiles import ImplProfile


@dataclass(frozen=True)
class Qwen2EncoderLayer:
    """One Qwen2 decoder layer run as an encoder layer over `seq` tokens per view."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    def evaluate(self, c: Cost, batch: int, seq: int, profile: ImplProfile, db: int, path: str | None) -> None:
        h, nh, nkv, hd = self.hidden, self.heads, self.kv_heads, self.head_dim
        rows = batch * seq
        c.elementwise(sub(path, "input_layernorm"), "rmsnorm", rows * h, EW["rmsnorm"], db, weight_elems=h)
        ap = sub(path, "self_attn")
        c.linear(sub(ap, "q_proj"), rows, h, nh * hd, bias=True, db=db)
        c.linear(sub(ap, "k_proj"), rows, h, nkv * hd, bias=True, db=db)
        c.linear(sub(ap, "v_proj"), rows, h, nkv * hd, bias=True, db=db)
        c.elementwise(sub(ap, "apply_rotary"), "rope", rows * (nh + nkv) * hd, EW["rope"], db)
        # the [B, 1, L, L] mask is added to every head's scores (float mask) before the softmax
        c.elementwise(sub(ap, "mask_add"), "add", batch * nh * seq * seq, EW["add"], db)
        vision_attention(c, ap, batch, nh, seq, hd, profile.vision_attention, db)
        c.linear(sub(ap, "o_proj"), rows, nh * hd, h, bias=False, db=db)
        c.elementwise(sub(path, "residual1"), "add", rows * h, EW["add"], db, reads=2)
        c.elementwise(sub(path, "post_attention_layernorm"), "rmsnorm", rows * h, EW["rmsnorm"], db, weight_elems=h)
        SwiGluMlp(h, self.intermediate).evaluate(c, rows, db, sub(path, "mlp"))
        c.elementwise(sub(path, "residual2"), "add", rows * h, EW["add"], db, reads=2)


@dataclass(frozen=True)
class Qwen2QueryEncoder:
    """The encoder stack with its learnable query tables (one per supported SAM grid)."""

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
        hd = self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads
        object.__setattr__(
            self,
            "_layer",
            Qwen2EncoderLayer(self.hidden_size, self.num_heads, self.num_kv_heads, hd, self.intermediate_size),
        )

    @property
    def head_size(self) -> int:
        return self._layer.head_dim  # type: ignore[attr-defined]

    def evaluate(
        self, c: Cost, batch: int, grid: int, profile: ImplProfile, db: int, path: str | None = "qwen2_encoder"
    ) -> int:
        """Adds one encoder call on `batch` SAM maps of grid x grid; returns the query outputs kept per view."""
        n = grid * grid
        if n not in self.query_counts:
            raise ConfigError(
                f"a {grid}x{grid} SAM map ({n} tokens) has no learnable query table (the encoder has "
                f"{', '.join(map(str, self.query_counts))}): use a view size the family supports"
            )
        seq = 2 * n  # [image tokens; queries]
        h = self.hidden_size
        if profile.rope == "per_layer_matmul":
            # transformers 4.46 Qwen2RotaryEmbedding, called once per Qwen2Model.forward:
            # inv_freq (1, D/2, 1) @ position_ids (1, 1, L) -> one bmm, whatever the batch
            c.bmm(sub(path, "rotary_emb"), "matmul_inv_freq_position_ids", 1, self.head_size // 2, 1, seq, db=4)
            c.elementwise(sub(path, "rotary_sincos"), "sincos", seq * self.head_size, EW["sincos"], 4)
        # cat([sam tokens, queries]) and the mask build are data moves, no FLOPs
        layer: Qwen2EncoderLayer = self._layer  # type: ignore[attr-defined]
        if c.want_records:
            for i in range(self.num_layers):
                layer.evaluate(c, batch, seq, profile, db, sub(path, f"layers.{i}"))
        elif self.num_layers:
            one = Cost()
            layer.evaluate(one, batch, seq, profile, db, None)
            c.add(one, self.num_layers)
        c.elementwise(sub(path, "norm"), "rmsnorm", batch * seq * h, EW["rmsnorm"], db, weight_elems=h)
        return n  # last_hidden_state[:, n:, :]: the query outputs only

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
