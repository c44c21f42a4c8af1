"""CLIP-L fed by SAM features (official deepencoder.py `VitModel`; transformers
`UnlimitedOcrVisionEncoder`). Its own patch conv never runs: SAM's 1024-channel output is the
patch embedding, so the sequence is (S/64)^2 + 1 tokens (CLS first).  Where the implementations
differ, each profile mode is a small term (`_CLIP_QKV`, `_CLIP_POSITIONS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from analytic.costs import EW, Cost, add_stack, sub
from analytic.layers.common import (
    ConfigError,
    VisionCall,
    VisionEncoder,
    layer_norm,
    layer_stack,
    output_permute_copies,
    resize_casts,
    vision_attention,
)
from core.profiles import ImplProfile


def _fused_qkv(c: Cost, ap: str | None, rows: int, d: int, db: int) -> None:
    """Official NoTPAttention.qkv_proj: Linear(1024, 3072)."""
    c.linear(sub(ap, "qkv_proj"), rows, d, 3 * d, bias=True, db=db)


def _separate_qkv(c: Cost, ap: str | None, rows: int, d: int, db: int) -> None:
    """transformers UnlimitedOcrAttention: q_proj, k_proj, v_proj."""
    for name in ("q_proj", "k_proj", "v_proj"):
        c.linear(sub(ap, name), rows, d, d, bias=True, db=db)


@dataclass(frozen=True)
class _ClipQkv:
    """One `ImplProfile.clip_qkv` mode: the input projection, and whether the block keeps the attention output
    bound until it returns (official deepencoder.py NoTPTransformerBlock.forward: residual = self_attn(...);
    h = x + residual; out = h + mlp(layer_norm2(h)) -- the attention output stays the local `residual`)."""

    project: Callable[[Cost, str | None, int, int, int], None]
    keeps_attention_output: bool


_CLIP_QKV = {"fused": _ClipQkv(_fused_qkv, True), "separate": _ClipQkv(_separate_qkv, False)}


@dataclass(frozen=True)
class ClipBlock:
    dim: int
    num_heads: int
    ffn: int

    def evaluate(self, c: Cost, batch: int, seq: int, profile: ImplProfile, db: int, path: str | None) -> None:
        """One pre-norm block.  Liveness: its input is live at entry and replaced by its output."""
        d, nh = self.dim, self.num_heads
        rows = batch * seq
        n = rows * d * db  # one (B, S, d) activation
        layer_norm(c, sub(path, "layer_norm1"), rows, d, db, profile.norm_stats_bytes(db))
        ap = sub(path, "self_attn")
        qkv = _CLIP_QKV[profile.clip_qkv]
        qkv.project(c, ap, rows, d, db)
        c.hold(3 * n)
        vision_attention(c, ap, batch, nh, seq, d // nh, profile.vision_attention, db)
        # attn_output.transpose(1, 2).contiguous(): a copy of a (B, H, S, D) output -- what SDPA returns on meta (math);
        # CPU flash already returns it (B, S, H, D)-strided, so there the copy moves nothing (README).  Official
        # NoTPAttention: q, k, v are permuted views of the fused qkv, so under `like_query` the output's
        # permute(0, 2, 1, 3).reshape(...) is a view
        if output_permute_copies(profile, q_contiguous=False):
            c.copy(sub(ap, "attn_output_contiguous"), "clone", rows * d, db)
            c.spike(2 * n)  # the attention output and its contiguous copy
        c.linear(sub(ap, "out_proj"), rows, d, d, bias=True, db=db)
        c.release(3 * n + n)  # q, k, v die with the attention, the normed input when it returns
        c.elementwise(sub(path, "residual1"), "add", rows * d, EW["add"], db, reads=2)
        c.hold(n)  # residual1 (hf: the out_proj output dies with the sum)
        kept = n if qkv.keeps_attention_output else 0
        c.hold(kept)
        self._mlp(c, rows, profile, db, path)
        c.release(rows * self.ffn * db + n + n + n + kept)  # fc1 (as the activation), layer_norm2, residual1 (and
        # official's `residual`); the caller drops the input

    def _mlp(self, c: Cost, rows: int, profile: ImplProfile, db: int, path: str | None) -> None:
        """layer_norm2, fc1, quick_gelu, fc2 and the second residual.  Liveness: the block's output is held."""
        d, f = self.dim, rows * self.ffn * db
        layer_norm(c, sub(path, "layer_norm2"), rows, d, db, profile.norm_stats_bytes(db))
        mp = sub(path, "mlp")
        c.linear(sub(mp, "fc1"), rows, d, self.ffn, bias=True, db=db)
        c.hold(f)
        # x * 1.702, sigmoid, x * sigmoid: 4 reads and 3 writes of rows x ffn
        c.elementwise(sub(mp, "act"), "quick_gelu", rows * self.ffn, EW["quick_gelu"], db, traffic=(4 * f, 3 * f))
        c.spike(2 * f)  # fc1's output, 1.702 x and its sigmoid (then the product, once 1.702 x is gone)
        c.linear(sub(mp, "fc2"), rows, self.ffn, d, bias=True, db=db)
        c.elementwise(sub(path, "residual2"), "add", rows * d, EW["add"], db, reads=2)
        c.hold(rows * d * db)  # the block's output


@dataclass(frozen=True)
class ClipEncoder(VisionEncoder):
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_hidden_size: int
    pretrain_grid: int  # 224 / 14: the trained position table (interpolated otherwise)
    stage: ClassVar[str] = "clip"

    def __post_init__(self) -> None:
        if self.num_layers < 0 or self.hidden_size <= 0 or self.num_heads <= 0:
            raise ConfigError("vision.clip: hidden_size and num_heads must be positive, num_layers >= 0")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"vision.clip.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        object.__setattr__(self, "_block", ClipBlock(self.hidden_size, self.num_heads, self.ffn_hidden_size))

    def _forward(self, c: Cost, v: VisionCall) -> int:
        """The embeddings, pre_layrnorm and the layers; returns the token count incl. CLS.  ``v.previous_tokens``:
        unused (CLIP keeps nothing from one call to the next)."""
        batch, profile, db, path = v.batch, v.profile, v.db, v.path
        d = self.hidden_size
        seq = v.grid * v.grid + 1
        # Both implementations read the whole trained position table (1 + 16x16 rows) once per call: an embedding
        # gather of every position id, or (hf, resized grid) a cast of the 256 grid rows plus the CLS row's cat;
        # the class embedding is read by the cat that prepends it.
        trained = self.pretrain_grid**2
        c.weight_read(sub(path, "position_embedding"), "embedding", (trained + 1) * d, db)
        c.weight_read(sub(path, "class_embedding"), "cat", d, db)
        # cat([class, SAM features]): reads the batch's patch rows, writes every row
        c.traffic(sub(path, "cat_class"), "cat", batch * (seq - 1) * d * db, batch * seq * d * db)
        positions, liveness = _CLIP_POSITIONS[profile.clip_positions]
        positions(self, c, batch, v.grid, seq, profile, db, path)
        # + positions (broadcast over the batch: read once)
        emb = (batch * seq * d * db + seq * d * db, batch * seq * d * db)
        c.elementwise(sub(path, "embeddings"), "add", batch * seq * d, EW["add"], db, traffic=emb)
        n = batch * seq * d * db
        kept = liveness(self, c, v.grid, seq, db, n)
        layer_norm(c, sub(path, "pre_layrnorm"), batch * seq, d, db, profile.norm_stats_bytes(db))  # held throughout
        blk: ClipBlock = self._block  # type: ignore[attr-defined]
        stack = layer_stack(c, path, self.num_layers, lambda one, p: blk.evaluate(one, batch, seq, profile, db, p))
        add_stack(c, stack, n)
        c.release(kept)
        return seq

    def _resized_positions(
        self, c: Cost, batch: int, grid: int, seq: int, profile: ImplProfile, db: int, path: str | None
    ) -> None:
        """transformers: the trained table itself (gathered by the position ids) or, for another grid, get_abs_pos's
        float32 copy, bicubic resize, cast back and the cat of the CLS row."""
        d, trained = self.hidden_size, self.pretrain_grid**2
        if grid == self.pretrain_grid:  # the gathered table is the position embedding itself; the gather reads the
            # int64 position ids buffer
            c.weight_read(sub(path, "position_ids"), "embedding", (trained + 1) * 8, 1)
            c.traffic(sub(path, "pos_embed_gather"), "embedding", 0, seq * d * db)
            return
        g2 = grid * grid * d
        if resize_casts(profile, db):
            c.traffic(sub(path, "pos_embed_cast"), "_to_copy", 0, trained * d * 4)  # its read: the weight read
            c.elementwise(
                sub(path, "pos_embed_interp"), "bicubic", g2, EW["bicubic"], db, traffic=(trained * d * 4, g2 * 4)
            )
            c.copy(sub(path, "pos_embed_cast_back"), "_to_copy", g2, db, read_db=4)
        else:  # float32: .to(torch.float32) and .to(dtype) are no copies; the resize reads the table (above)
            c.elementwise(sub(path, "pos_embed_interp"), "bicubic", g2, EW["bicubic"], db, traffic=(0, g2 * 4))
        c.traffic(sub(path, "pos_embed_cat"), "cat", g2 * db, seq * d * db)

    def _resized_liveness(self, c: Cost, grid: int, seq: int, db: int, n: int) -> int:
        """transformers: the class cat and the sum with the positions; nothing kept through the layers."""
        c.spike(2 * n)
        return 0

    def _official_liveness(self, c: Cost, grid: int, seq: int, db: int, n: int) -> int:
        """Official CLIPVisionEmbeddings.forward: the class cat, the positions get_abs_pos returns (the gathered
        table itself when the grid is the trained one) and their sum live together; VitModel.forward then keeps
        the sum as its local `x` through the whole transformer (returns its bytes, released when it returns)."""
        trained = self.pretrain_grid**2
        pos = (trained + 1) * self.hidden_size * db if grid == self.pretrain_grid else seq * self.hidden_size * db
        c.spike(n + pos)
        c.hold(n)
        return n

    def _official_positions(
        self, c: Cost, batch: int, grid: int, seq: int, profile: ImplProfile, db: int, path: str | None
    ) -> None:
        """Official CLIPVisionEmbeddings.forward: embeddings + get_abs_pos(self.position_embedding(self.position_ids)).

        The embedding gathers all 1 + T^2 rows (the table read: the caller's weight read; the int64 position_ids
        buffer: a weight read too) and writes them.  When the grid differs from the trained one, get_abs_pos makes
        the T^2 grid rows contiguous (the permuted view), casts to float32 and back when the dtype is not float32,
        resizes (bicubic) and cats the CLS row in front (the CLS row is read from the gathered table)."""
        d, trained = self.hidden_size, self.pretrain_grid**2
        c.weight_read(sub(path, "position_ids"), "embedding", (trained + 1) * 8, 1)
        c.traffic(sub(path, "pos_embed_gather"), "embedding", 0, (trained + 1) * d * db)
        if grid != self.pretrain_grid:
            g2 = grid * grid * d
            c.copy(sub(path, "pos_embed_contiguous"), "clone", trained * d, db)
            cast = resize_casts(profile, db)
            if cast:
                c.copy(sub(path, "pos_embed_cast"), "_to_copy", trained * d, 4, read_db=db)
            resize = (trained * d * 4, g2 * 4)
            c.elementwise(sub(path, "pos_embed_interp"), "bicubic", g2, EW["bicubic"], db, traffic=resize)
            if cast:
                c.copy(sub(path, "pos_embed_cast_back"), "_to_copy", g2, db, read_db=4)
            c.traffic(sub(path, "pos_embed_cat"), "cat", (g2 + d) * db, seq * d * db)
            # liveness, next to the class cat (batch x seq rows) and the gathered table (its argument): get_abs_pos's
            # old_pos_embed (the contiguous grid rows, replaced by their float32 copy when casting, which then
            # lives until it returns), the resize's float32 output and its cast back, and the cat of the CLS row
            base = batch * seq * d * db + (trained + 1) * d * db
            contig, interp, cat = trained * d * db, g2 * 4, seq * d * db
            if cast:
                f32, back = trained * d * 4, g2 * db
                c.spike(base + max(contig + f32, f32 + interp + back, f32 + back + cat))
            else:  # the casts are no copies: the resize's output is the new table
                c.spike(base + contig + interp + cat)

    def params(self) -> int:
        """Parameter count: class embedding, the trained position table (CLS row included), the pre-LayerNorm and
        the layers (two LayerNorms, q/k/v and out projections, fc1 and fc2, all with biases).  Its patch conv never
        exists here: SAM's map is the patch embedding."""
        d, f = self.hidden_size, self.ffn_hidden_size
        layer = 4 * d + 4 * (d * d + d) + d * f + f + f * d + d
        return d + (self.pretrain_grid**2 + 1) * d + 2 * d + self.num_layers * layer

    def buffer_bytes(self, profile: ImplProfile) -> int:
        """Buffers: the int64 position ids, one per trained position and the CLS row (both implementations)."""
        return (self.pretrain_grid**2 + 1) * 8

    def bound_output_bytes(self, batch: int, grid: int, profile: ImplProfile, db: int, last: bool) -> int:
        """Bytes a call leaves to its caller: the output, class row included (the caller drops it by slicing)."""
        return batch * (grid * grid + 1) * self.hidden_size * db

    def projector_reads_sam_features(self) -> bool:
        """The projector reads the concatenation of CLIP's and SAM's features, which the caller builds."""
        return True

    def projector_rows(self, seq: int) -> int:
        """Rows per view the projector reads: the CLS row is dropped before fusion."""
        return seq - 1

    def projector_input_strided(self, batch: int) -> bool:
        """The projector reads the concatenation of CLIP and SAM features: a new, contiguous tensor."""
        return False


# ImplProfile.clip_positions -> (the positions' ops, the embeddings' liveness)
_CLIP_POSITIONS = {
    "resize_table": (ClipEncoder._resized_positions, ClipEncoder._resized_liveness),
    "gather_then_resize": (ClipEncoder._official_positions, ClipEncoder._official_liveness),
}
