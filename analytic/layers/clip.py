"""CLIP-L fed by SAM features (official deepencoder.py `VitModel`; transformers
`UnlimitedOcrVisionEncoder`). Its own patch conv never runs: SAM's 1024-channel output is the
patch embedding, so the sequence is (S/64)^2 + 1 tokens (CLS first).
"""

from __future__ import annotations

from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import ConfigError, vision_attention
from analytic.profiles import ImplProfile


@dataclass(frozen=True)
class ClipBlock:
    dim: int
    num_heads: int
    ffn: int

    def evaluate(self, c: Cost, batch: int, seq: int, profile: ImplProfile, db: int, path: str | None) -> None:
        d, nh = self.dim, self.num_heads
        hd = d // nh
        rows = batch * seq
        c.elementwise(sub(path, "layer_norm1"), "layernorm", rows * d, EW["layernorm"], db, weight_elems=2 * d)
        ap = sub(path, "self_attn")
        if profile.clip_qkv == "fused":  # official NoTPAttention.qkv_proj: Linear(1024, 3072)
            c.linear(sub(ap, "qkv_proj"), rows, d, 3 * d, bias=True, db=db)
        else:  # transformers UnlimitedOcrAttention: q_proj, k_proj, v_proj
            for name in ("q_proj", "k_proj", "v_proj"):
                c.linear(sub(ap, name), rows, d, d, bias=True, db=db)
        vision_attention(c, ap, batch, nh, seq, hd, profile.vision_attention, db)
        c.linear(sub(ap, "out_proj"), rows, d, d, bias=True, db=db)
        c.elementwise(sub(path, "residual1"), "add", rows * d, EW["add"], db, reads=2)
        c.elementwise(sub(path, "layer_norm2"), "layernorm", rows * d, EW["layernorm"], db, weight_elems=2 * d)
        mp = sub(path, "mlp")
        c.linear(sub(mp, "fc1"), rows, d, self.ffn, bias=True, db=db)
        c.elementwise(sub(mp, "act"), "quick_gelu", rows * self.ffn, EW["quick_gelu"], db)
        c.linear(sub(mp, "fc2"), rows, self.ffn, d, bias=True, db=db)
        c.elementwise(sub(path, "residual2"), "add", rows * d, EW["add"], db, reads=2)


@dataclass(frozen=True)
class ClipEncoder:
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_hidden_size: int
    pretrain_grid: int  # 224 / 14: the trained position table (interpolated otherwise)

    def __post_init__(self) -> None:
        if self.num_layers < 0 or self.hidden_size <= 0 or self.num_heads <= 0:
            raise ConfigError("vision.clip: hidden_size and num_heads must be positive, num_layers >= 0")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"vision.clip.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        object.__setattr__(self, "_block", ClipBlock(self.hidden_size, self.num_heads, self.ffn_hidden_size))

    def evaluate(self, c: Cost, batch: int, grid: int, profile: ImplProfile, db: int, path: str | None = "clip") -> int:
        """Adds one CLIP call on `batch` SAM maps of grid x grid; returns the token count incl. CLS."""
        d = self.hidden_size
        seq = grid * grid + 1
        # Both implementations read the whole trained position table (1 + 16x16 rows) once per call: an embedding
        # gather of every position id, or (hf, resized grid) a cast of the 256 grid rows plus the CLS row's cat;
        # the class embedding is read by the cat that prepends it.
        c.weight_read(sub(path, "position_embedding"), "embedding", (self.pretrain_grid**2 + 1) * d, db)
        c.weight_read(sub(path, "class_embedding"), "cat", d, db)
        if grid != self.pretrain_grid:  # get_abs_pos: bicubic resize of the 16x16 table (not counted)
            c.elementwise(sub(path, "pos_embed_interp"), "bicubic", grid * grid * d, EW["bicubic"], db)
        c.elementwise(sub(path, "embeddings"), "add", batch * seq * d, EW["add"], db, reads=2)
        c.elementwise(sub(path, "pre_layrnorm"), "layernorm", batch * seq * d, EW["layernorm"], db, weight_elems=2 * d)
        blk: ClipBlock = self._block  # type: ignore[attr-defined]
        if c.want_records:
            for i in range(self.num_layers):
                blk.evaluate(c, batch, seq, profile, db, sub(path, f"layers.{i}"))
        elif self.num_layers:
            one = Cost()
            blk.evaluate(one, batch, seq, profile, db, None)
            c.add(one, self.num_layers)
        return seq

    def projector_rows(self, seq: int) -> int:
        """Rows per view the projector reads: the CLS row is dropped before fusion."""
        return seq - 1
