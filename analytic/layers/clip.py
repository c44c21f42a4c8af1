"""CLIP-L fed by SAM features (official deepencoder.py `VitModel`; transformers
`UnlimitedOcrVisionEncoder`). Its own patch conv never runs: SAM's 1024-channel output is the
patch embedding, so the sequence is (S/64)^2 + 1 tokens (CLS first).
"""

from __future__ import annotations

from dataclasses import dataclass

from analytic.costs import EW, Cost, add_stack, sub
from analytic.layers.common import ConfigError, layer_norm, vision_attention
from core.profiles import ImplProfile


@dataclass(frozen=True)
class ClipBlock:
    dim: int
    num_heads: int
    ffn: int

    def evaluate(self, c: Cost, batch: int, seq: int, profile: ImplProfile, db: int, path: str | None) -> None:
        """One pre-norm block.  Liveness: its input is live at entry and replaced by its output."""
        d, nh = self.dim, self.num_heads
        hd = d // nh
        rows = batch * seq
        n = rows * d * db  # one (B, S, d) activation
        f = rows * self.ffn * db
        layer_norm(c, sub(path, "layer_norm1"), rows, d, db, profile.norm_stats_bytes(db))
        ap = sub(path, "self_attn")
        if profile.clip_qkv == "fused":  # official NoTPAttention.qkv_proj: Linear(1024, 3072)
            c.linear(sub(ap, "qkv_proj"), rows, d, 3 * d, bias=True, db=db)
        else:  # transformers UnlimitedOcrAttention: q_proj, k_proj, v_proj
            for name in ("q_proj", "k_proj", "v_proj"):
                c.linear(sub(ap, name), rows, d, d, bias=True, db=db)
        c.hold(3 * n)
        vision_attention(c, ap, batch, nh, seq, hd, profile.vision_attention, db)
        # attn_output.transpose(1, 2).contiguous(): a copy of a (B, H, S, D) output -- what SDPA returns on meta (math);
        # CPU flash already returns it (B, S, H, D)-strided, so there the copy moves nothing (docs/metrics.md). Official
        # NoTPAttention: q, k, v are permuted views of the fused qkv, so under `like_query` the output's
        # permute(0, 2, 1, 3).reshape(...) is a view
        if profile.vision_sdpa_output == "contiguous" or profile.vision_attention == "eager":
            c.copy(sub(ap, "attn_output_contiguous"), "clone", rows * d, db)
            c.spike(2 * n)  # the attention output and its contiguous copy
        c.linear(sub(ap, "out_proj"), rows, d, d, bias=True, db=db)
        c.release(3 * n + n)  # q, k, v die with the attention, the normed input when it returns
        c.elementwise(sub(path, "residual1"), "add", rows * d, EW["add"], db, reads=2)
        c.hold(n)  # residual1 (hf: the out_proj output dies with the sum)
        # official deepencoder.py NoTPTransformerBlock.forward: residual = self_attn(...); h = x + residual;
        # out = h + mlp(layer_norm2(h)) -- the attention output stays the local `residual` until the block returns
        kept = n if profile.clip_qkv == "fused" else 0
        c.hold(kept)
        layer_norm(c, sub(path, "layer_norm2"), rows, d, db, profile.norm_stats_bytes(db))
        mp = sub(path, "mlp")
        c.linear(sub(mp, "fc1"), rows, d, self.ffn, bias=True, db=db)
        c.hold(f)
        # x * 1.702, sigmoid, x * sigmoid: 4 reads and 3 writes of rows x ffn
        c.elementwise(sub(mp, "act"), "quick_gelu", rows * self.ffn, EW["quick_gelu"], db, traffic=(4 * f, 3 * f))
        c.spike(2 * f)  # fc1's output, 1.702 x and its sigmoid (then the product, once 1.702 x is gone)
        c.linear(sub(mp, "fc2"), rows, self.ffn, d, bias=True, db=db)
        c.elementwise(sub(path, "residual2"), "add", rows * d, EW["add"], db, reads=2)
        c.hold(n)  # the block's output
        c.release(f + n + n + n + kept)  # fc1 (as the activation), layer_norm2, residual1 (and official's
        # `residual`); the caller drops the input


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

    def evaluate(
        self,
        c: Cost,
        batch: int,
        grid: int,
        profile: ImplProfile,
        db: int,
        path: str | None = "clip",
        previous_tokens: int = 0,
    ) -> int:
        """Adds one CLIP call on `batch` SAM maps of grid x grid; returns the token count incl. CLS.
        ``previous_tokens``: unused (CLIP keeps nothing from one call to the next)."""
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
        if profile.clip_positions == "gather_then_resize":
            self._official_positions(c, batch, grid, seq, profile, db, path)
        elif grid != self.pretrain_grid:  # get_abs_pos: float32 copy, bicubic resize, cast back, cat the CLS row
            g2 = grid * grid * d
            if profile.vision_resize_casts == "always" or db != 4:
                c.traffic(sub(path, "pos_embed_cast"), "_to_copy", 0, trained * d * 4)  # its read: the weight read
                c.elementwise(
                    sub(path, "pos_embed_interp"), "bicubic", g2, EW["bicubic"], db, traffic=(trained * d * 4, g2 * 4)
                )
                c.copy(sub(path, "pos_embed_cast_back"), "_to_copy", g2, db, read_db=4)
            else:  # float32: .to(torch.float32) and .to(dtype) are no copies; the resize reads the table (above)
                c.elementwise(sub(path, "pos_embed_interp"), "bicubic", g2, EW["bicubic"], db, traffic=(0, g2 * 4))
            c.traffic(sub(path, "pos_embed_cat"), "cat", g2 * db, seq * d * db)
        else:  # the gathered table is the position embedding itself; the gather reads the int64 position ids buffer
            c.weight_read(sub(path, "position_ids"), "embedding", (trained + 1) * 8, 1)
            c.traffic(sub(path, "pos_embed_gather"), "embedding", 0, seq * d * db)
        # + positions (broadcast over the batch: read once)
        emb = (batch * seq * d * db + seq * d * db, batch * seq * d * db)
        c.elementwise(sub(path, "embeddings"), "add", batch * seq * d, EW["add"], db, traffic=emb)
        n = batch * seq * d * db
        official = profile.clip_positions == "gather_then_resize"
        if official:
            # CLIPVisionEmbeddings.forward: the class cat, the positions get_abs_pos returns (the gathered table
            # itself when the grid is the trained one) and their sum live together; VitModel.forward then keeps
            # the sum as its local `x` through the whole transformer
            pos = (trained + 1) * d * db if grid == self.pretrain_grid else seq * d * db
            c.spike(n + pos)
            c.hold(n)
        else:
            c.spike(2 * n)  # the class cat and the sum with the positions
        stats = profile.norm_stats_bytes(db)
        layer_norm(c, sub(path, "pre_layrnorm"), batch * seq, d, db, stats)  # held through every layer
        blk: ClipBlock = self._block  # type: ignore[attr-defined]
        if c.want_records:
            layers = []
            for i in range(self.num_layers):
                one = Cost(True)
                blk.evaluate(one, batch, seq, profile, db, sub(path, f"layers.{i}"))
                layers.append((one, 1))
            add_stack(c, layers, n)
        elif self.num_layers:
            one = Cost()
            blk.evaluate(one, batch, seq, profile, db, None)
            add_stack(c, [(one, self.num_layers)], n)
        if official:
            c.release(n)  # VitModel.forward's x dies when it returns
        return seq

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
            cast = profile.vision_resize_casts == "always" or db != 4
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
