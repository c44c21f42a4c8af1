"""CLIP-L fed by SAM features (official deepencoder.py `VitModel`; transformers
`UnlimitedOcrVisionEncoder`). Its own patch conv never runs: SAM's 1024-channel output is the
patch embedding, so the sequence is (S/64)^2 + 1 tokens (CLS first).
"""

from __future__ import annotations

from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import ConfigError, layer_norm, vision_attention
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
        layer_norm(c, sub(path, "layer_norm1"), rows, d, db)
        ap = sub(path, "self_attn")
        if profile.clip_qkv == "fused":  # official NoTPAttention.qkv_proj: Linear(1024, 3072)
            c.linear(sub(ap, "qkv_proj"), rows, d, 3 * d, bias=True, db=db)
        else:  # transformers UnlimitedOcrAttention: q_proj, k_proj, v_proj
            for name in ("q_proj", "k_proj", "v_proj"):
                c.linear(sub(ap, name), rows, d, d, bias=True, db=db)
        vision_attention(c, ap, batch, nh, seq, hd, profile.vision_attention, db)
        # attn_output.transpose(1, 2).contiguous(): a copy of a (B, H, S, D) output -- what SDPA returns on meta (math);
        # CPU flash already returns it (B, S, H, D)-strided, so there the copy moves nothing (README)
        c.copy(sub(ap, "attn_output_contiguous"), "clone", rows * d, db)
        c.linear(sub(ap, "out_proj"), rows, d, d, bias=True, db=db)
        c.elementwise(sub(path, "residual1"), "add", rows * d, EW["add"], db, reads=2)
        layer_norm(c, sub(path, "layer_norm2"), rows, d, db)
        mp = sub(path, "mlp")
        c.linear(sub(mp, "fc1"), rows, d, self.ffn, bias=True, db=db)
        n = rows * self.ffn  # x * 1.702, sigmoid, x * sigmoid: 4 reads and 3 writes of rows x ffn
        c.elementwise(sub(mp, "act"), "quick_gelu", n, EW["quick_gelu"], db, traffic=(4 * n * db, 3 * n * db))
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
        trained = self.pretrain_grid**2
        c.weight_read(sub(path, "position_embedding"), "embedding", (trained + 1) * d, db)
        c.weight_read(sub(path, "class_embedding"), "cat", d, db)
        # cat([class, SAM features]): reads the batch's patch rows, writes every row
        c.traffic(sub(path, "cat_class"), "cat", batch * (seq - 1) * d * db, batch * seq * d * db)
        if grid != self.pretrain_grid:  # get_abs_pos: float32 copy, bicubic resize, cast back, cat the CLS row
            g2 = grid * grid * d
            c.traffic(sub(path, "pos_embed_cast"), "_to_copy", 0, trained * d * 4)  # its read: the weight read above
            c.elementwise(
                sub(path, "pos_embed_interp"), "bicubic", g2, EW["bicubic"], db, traffic=(trained * d * 4, g2 * 4)
            )
            c.copy(sub(path, "pos_embed_cast_back"), "_to_copy", g2, db, read_db=4)
            c.traffic(sub(path, "pos_embed_cat"), "cat", g2 * db, seq * d * db)
        else:  # the gathered table is the position embedding itself
            c.traffic(sub(path, "pos_embed_gather"), "embedding", 0, seq * d * db)
        # + positions (broadcast over the batch: read once)
        emb = (batch * seq * d * db + seq * d * db, batch * seq * d * db)
        c.elementwise(sub(path, "embeddings"), "add", batch * seq * d, EW["add"], db, traffic=emb)
        layer_norm(c, sub(path, "pre_layrnorm"), batch * seq, d, db)
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

    def projector_input_strided(self, batch: int) -> bool:
        """The projector reads the concatenation of CLIP and SAM features: a new, contiguous tensor."""
        return False
