"""SAM-B image encoder (official deepencoder.py `ImageEncoderViT`; transformers
`UnlimitedOcrSamVisionEncoder`): patch conv, abs-pos interpolation, windowed and global
blocks with decomposed relative positions, neck, net_2, net_3.

FLOPs are identical in both implementations; only the attention kernel family can differ
(SDPA with a float bias mask, or the eager pair of matmuls of the transformers class).
"""

from __future__ import annotations

from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import ConfigError, group, layer_norm, vision_attention
from core.profiles import ImplProfile


@dataclass(frozen=True)
class SamBlock:
    """One ViT block; window 0 means global attention over the whole grid."""

    dim: int
    num_heads: int
    mlp_dim: int
    window: int
    qkv_bias: bool = True
    use_rel_pos: bool = True
    trained_grid: int = 64  # rel-pos tables of a global block have 2 x trained_grid - 1 rows (windows: 2 x window - 1)

    def evaluate(self, c: Cost, batch: int, grid: int, profile: ImplProfile, db: int, path: str | None) -> None:
        """One block on ``batch`` grids of grid x grid.  Liveness: the block's input is live at entry (its caller
        holds it) and is replaced by its output, so a block leaves the level where it found it."""
        tokens = batch * grid * grid
        d, nh = self.dim, self.num_heads
        hd = d // nh
        n = tokens * d * db  # one (B, g, g, d) activation
        layer_norm(c, sub(path, "norm1"), tokens, d, db, profile.norm_stats_bytes(db))
        if self.window > 0:
            # window_partition pads the grid up to a multiple of the window (64->70, 40->42, ...).
            padded = -(-grid // self.window) * self.window
            n_views = batch * (padded // self.window) ** 2
            side = self.window
        else:
            n_views, side = batch, grid
        seq = side * side
        rows = n_views * seq
        r = rows * d * db  # one activation over the attention's views (the padded windows, or the grid)
        ap = sub(path, "attn")
        if self.window > 0:  # F.pad, then the windows' permute made contiguous
            c.traffic(sub(path, "window_pad"), "constant_pad_nd", tokens * d * db, rows * d * db)
            c.copy(sub(path, "window_partition"), "clone", rows * d, db)
            c.spike(2 * r)  # the padded grid and its contiguous windows, next to the normed grid
            c.hold(r)
            c.release(n)  # the normed grid dies when the windows replace it
        c.linear(sub(ap, "qkv"), rows, d, 3 * d, bias=self.qkv_bias, db=db)
        c.hold(3 * r)
        official = profile.sam_qkv == "merged_reshape"
        # hf: reshape(...).permute(2, 0, 3, 1, 4) made contiguous -> q, k, v.  official Attention.forward:
        # qkv.reshape(3, B * nHead, H * W, -1) of the permuted qkv merges B and the heads, a view only when B is 1
        q_copied = n_views > 1 or not official
        qkv_copied = 3 * r if q_copied else 0
        if q_copied:
            c.copy(sub(ap, "qkv_permute"), "clone", rows * 3 * d, db)
            c.hold(qkv_copied)
        bias_bytes = terms_held = 0
        if self.use_rel_pos:
            # get_rel_pos, once per table (h, w): the table (L rows of head_dim) is read by the linear resize
            # (hf: always; official: when L != 2 x side - 1), else gathered row by row (side x side rows).
            rows_l = 2 * (self.window or self.trained_grid) - 1
            sized = rows_l == 2 * side - 1
            gathered = side * side
            from_table = sized and profile.rel_pos_table == "gather_when_sized"
            read = gathered if from_table else rows_l
            c.weight_read(sub(ap, "rel_pos_tables"), "get_rel_pos", 2 * read * hd, db)
            casts = profile.vision_resize_casts == "always" or db != 4
            for axis in ("h", "w"):
                _rel_pos_gather(
                    c, sub(ap, f"rel_pos_{axis}_table"), side, hd, 2 * side - 1, from_table, db, rows_l, casts, profile
                )
            # reshaped_query = query.reshape(B, h, w, dim): a copy of q (twice for a global block, the second
            # einsum's operand permuted again), then einsum("bhwc,hkc->bhwk") and einsum("bhwc,wkc->bhwk").
            # official add_decomposed_rel_pos: the first einsum copies its permuted operand, the second only when
            # q is still a strided view of the qkv output (B = 1)
            n_query = (1 + (not q_copied)) if official else (1 if self.window > 0 else 2)
            c.copy(sub(ap, "rel_pos_query"), "clone", rows * d * n_query, db)
            c.bmm(sub(ap, "rel_pos_h"), "einsum_bhwc_hkc", side, n_views * nh * side, hd, side, db=db)
            c.bmm(sub(ap, "rel_pos_w"), "einsum_bhwc_wkc", side, n_views * nh * side, hd, side, db=db)
            # rel_h[..., None] + rel_w[..., None, :] builds the (seq x seq) bias (read broadcast: 2 einsum outputs),
            # made contiguous for SDPA, which adds it to the scores (the second add) and reads it.
            bias = n_views * nh * seq * seq
            einsum_out = n_views * nh * seq * side
            if profile.sam_rel_pos_bias == "reshaped_terms":
                # official: rel_h.reshape(B, q_h * q_w, k_h, 1) and rel_w.reshape(B, q_h * q_w, 1, k_w) of the
                # permuted einsum outputs: one copy each; (rel_h + rel_w).view(...) is the mask itself
                c.copy(sub(ap, "rel_pos_terms"), "clone", 2 * einsum_out, db)
                # add_decomposed_rel_pos's locals: the gathered Rh and Rw (side x side rows of hd each) live until it
                # returns; the first einsum's operand copy (q's bytes: r / 3 x 3 = rows x d) dies with it, the second
                # einsum's (when q is a strided view) next to both outputs; then each reshape copies its output
                # while the other output is alive (3 outputs' worth); the reshaped copies stay Attention.forward's
                # rel_h and rel_w until it returns
                e = einsum_out * db
                gathers = 2 * side * side * hd * db
                c.spike(gathers + max(r + e + (0 if q_copied else e), 3 * e))
                c.hold(2 * e)
                terms_held = 2 * e
            else:
                c.spike(2 * einsum_out * db + r // 3)  # rel_h, rel_w and a query copy (q is a third of qkv)
            c.elementwise(
                sub(ap, "rel_pos_bias"), "add", bias, 2 * EW["add"], db, traffic=(2 * einsum_out * db, bias * db)
            )
            bias_bytes = bias * db
            c.hold(bias_bytes)  # the mask lives until the attention returns
            if profile.sam_rel_pos_bias == "contiguous":
                # the sum's layout is not the (B, nHead, HW, HW) one, so reshape copies it: both live at once, then
                # the copy alone stays -- the block's (and SAM's) high-water mark
                c.copy(sub(ap, "rel_pos_bias_contiguous"), "clone", bias, db)
                c.spike(bias_bytes)
            c.traffic(sub(ap, "sdpa_mask_read"), "scaled_dot_product_attention", bias * db, 0)
        vision_attention(c, ap, n_views, nh, seq, hd, profile.vision_attention, db)
        # deepencoder.py Attention.forward (the profile with its reshaped rel-pos terms): the attention output is x
        # (or the permuted copy that replaces it) until x = self.proj(x) replaces it
        keeps_x = profile.sam_rel_pos_bias == "reshaped_terms"
        if keeps_x:
            c.hold(r)
        # x.view(B, nHead, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1): a copy unless SDPA returned
        # the output in the query's layout and q was a strided view (vision_sdpa_output)
        if profile.vision_sdpa_output == "contiguous" or q_copied or profile.vision_attention == "eager":
            c.copy(sub(ap, "attn_output_permute"), "clone", rows * d, db)
            c.spike(r)  # the permuted copy next to the attention output
        if keeps_x:
            c.linear(sub(ap, "proj"), rows, d, d, bias=True, db=db)
            c.hold(r)
            c.release(r)
        else:
            c.spike(r)  # the attention output
            c.linear(sub(ap, "proj"), rows, d, d, bias=True, db=db)
            c.hold(r)
        c.release(3 * r + qkv_copied + bias_bytes + terms_held)  # the attention's locals die when it returns
        if self.window > 0:  # window_unpartition's permute made contiguous, then [:, :H, :W] made contiguous
            c.copy(sub(path, "window_unpartition"), "clone", rows * d, db)
            c.copy(sub(path, "window_crop"), "clone", tokens * d, db)
            c.release(r)  # the windows (the attention's input)
            c.spike(r + n)  # the unpartitioned copy and the cropped one, next to the projection
            c.hold(n)
            c.release(r)  # the projection, replaced by the cropped grid
        else:
            c.release(n)  # the normed grid (the attention's input)
        c.elementwise(sub(path, "residual1"), "add", tokens * d, EW["add"], db, reads=2)
        c.hold(n)
        c.release(n)  # the attention's output
        layer_norm(c, sub(path, "norm2"), tokens, d, db, profile.norm_stats_bytes(db))
        mp = sub(path, "mlp")
        # The MLP runs on the unpadded grid (window_unpartition crops the padding first).
        m = tokens * self.mlp_dim * db
        c.linear(sub(mp, "lin1"), tokens, d, self.mlp_dim, bias=True, db=db)
        c.hold(m)
        c.elementwise(sub(mp, "act"), "gelu", tokens * self.mlp_dim, EW["gelu"], db)
        c.spike(m)  # GELU's output next to lin1's
        c.linear(sub(mp, "lin2"), tokens, self.mlp_dim, d, bias=True, db=db)
        c.elementwise(sub(path, "residual2"), "add", tokens * d, EW["add"], db, reads=2)
        c.hold(n)  # the block's output
        c.release(m + 2 * n + n)  # lin1 (as GELU's), norm2 and residual1 die; the caller drops the block's input


def layer_norm_2d(c: Cost, path: str | None, rows: int, width: int, db: int) -> None:
    """Official deepencoder.py `LayerNorm2d.forward` over `rows` pixels of `width` channels, op by op:
    u = x.mean(1); s = (x - u).pow(2).mean(1); x = (x - u) / torch.sqrt(s + eps); weight[:, None, None] * x + bias.
    Per element n = rows x width: mean, sub, pow, mean, sub, div, mul, add (8 FLOPs); per row: add, sqrt (2).
    Bytes: reads 8n + 5 rows + 2 width (the two mean/variance rows read by sub, sub, div, add, sqrt), writes
    6n + 4 rows."""
    n = rows * width
    reads = (8 * n + 5 * rows) * db
    writes = (6 * n + 4 * rows) * db
    c.elementwise(path, "layernorm2d", n, 8, db, weight_elems=2 * width, traffic=(reads, writes))
    c.elementwise_flops += 2 * rows


def _block_params(blk: SamBlock) -> int:
    """Parameters of one block: two LayerNorms, qkv and proj (with biases), the MLP, the two rel-pos tables."""
    d, m, hd = blk.dim, blk.mlp_dim, blk.dim // blk.num_heads
    rel = 2 * (2 * (blk.window or blk.trained_grid) - 1) * hd if blk.use_rel_pos else 0
    return 4 * d + 3 * d * d + 3 * d * blk.qkv_bias + d * d + d + d * m + m + m * d + d + rel


def _rel_pos_gather(
    c: Cost,
    path: str | None,
    side: int,
    hd: int,
    max_rel: int,
    from_table: bool,
    db: int,
    rows_l: int = 0,
    casts: bool = True,
    profile: ImplProfile | None = None,
) -> None:
    """get_rel_pos after the table read: the resized table written (unless gathered straight from the weight), the
    relative coordinates (arange x2, scale x2, sub, add, .long()) and the gather of side x side rows of hd.
    Elementwise FLOPs: the linear resize (2 per output element), the two scales (side each), the sub and the add
    (side x side each, float32)."""
    c.elementwise_flops += 2 * side + 2 * side * side
    if not from_table:
        c.elementwise_flops += EW["linear_resize"] * max_rel * hd
        if profile is not None and profile.rel_pos_table == "gather_when_sized" and casts:
            # official get_rel_pos: rel_pos.to(float32) (its read: the table read), linear resize, .to(dtype);
            # transformers' resizes in the model's dtype (below)
            c.traffic(sub(path, "cast"), "_to_copy", 0, rows_l * hd * 4)
            c.traffic(sub(path, "resized"), "upsample_linear1d", rows_l * hd * 4, max_rel * hd * 4)
            c.copy(sub(path, "cast_back"), "_to_copy", max_rel * hd, db, read_db=4)
        else:
            c.traffic(sub(path, "resized"), "upsample_linear1d", 0, max_rel * hd * db)
    # arange x2 (int64), x scale x2 (float32 out), q - k, + offset (side x side float32), .long() (int64)
    ends = 2 * side * 8 + 2 * side * 4
    c.traffic(sub(path, "coords"), "arange", ends + 2 * side * side * 4, ends + 2 * side * side * 4 + side * side * 8)
    rows = side * side
    c.traffic(sub(path, "gather"), "index", rows * hd * db * (not from_table) + rows * 8, rows * hd * db)


@dataclass(frozen=True)
class SamEncoder:
    """SAM ViT-B as DeepSeek-OCR builds it (`build_sam_vit_b`)."""

    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    window_size: int
    global_attn_indexes: tuple[int, ...]
    out_chans: int
    downsample_channels: tuple[int, ...]
    qkv_bias: bool
    use_rel_pos: bool
    use_abs_pos: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_attn_indexes", tuple(self.global_attn_indexes))
        object.__setattr__(self, "downsample_channels", tuple(self.downsample_channels))
        for label, v in (("depth", self.depth), ("embed_dim", self.embed_dim), ("num_heads", self.num_heads)):
            if v <= 0:
                raise ConfigError(f"vision.sam.{label}={v} must be positive")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"vision.sam.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(
                f"vision.sam.global_attn_indexes {bad} outside depth {self.depth}; "
                f"override them too, e.g. 'vision.sam.global_attn_indexes=[{self.depth - 1}]'"
            )
        if len(self.downsample_channels) != 2:
            raise ConfigError("vision.sam.downsample_channels must list two channel counts (net_2, net_3)")
        blocks = tuple(
            SamBlock(
                self.embed_dim,
                self.num_heads,
                int(self.embed_dim * self.mlp_ratio),
                0 if i in self.global_attn_indexes else self.window_size,
                self.qkv_bias,
                self.use_rel_pos,
                self.img_size // self.patch_size,
            )
            for i in range(self.depth)
        )
        object.__setattr__(self, "_blocks", blocks)

    @property
    def out_channels(self) -> int:
        return self.downsample_channels[-1]

    def params(self) -> int:
        """Parameter count: patch conv (with bias), the trained position table, the blocks, the neck (two
        bias-free convolutions and two norms) and the two bias-free downsampling convolutions."""
        d, oc, (c2, c3) = self.embed_dim, self.out_chans, self.downsample_channels
        trained = self.img_size // self.patch_size
        n = self.in_chans * d * self.patch_size**2 + d + trained * trained * d * self.use_abs_pos
        n += sum(_block_params(blk) for blk in self._blocks)  # type: ignore[attr-defined]
        return n + d * oc + 2 * oc + oc * oc * 9 + 2 * oc + oc * c2 * 9 + c2 * c3 * 9

    def output_grid(self, size: int) -> int:
        """Spatial side of net_3's output for an input of `size` pixels (S/64 for DeepSeek-OCR)."""
        g = size // self.patch_size
        for _ in range(2):
            g = (g + 2 - 3) // 2 + 1
        return g

    def output_bytes(self, batch: int, size: int, db: int) -> int:
        """Bytes of one call's output: net_3's channels on its grid, per image."""
        return batch * self.downsample_channels[-1] * self.output_grid(size) ** 2 * db

    def evaluate(self, c: Cost, batch: int, size: int, profile: ImplProfile, db: int, path: str | None = "sam") -> int:
        """Adds the cost of one SAM call on `batch` images of `size` px; returns the output grid side."""
        d = self.embed_dim
        g, _ = c.conv2d(
            sub(path, "patch_embed"),
            batch,
            self.in_chans,
            size,
            size,
            d,
            self.patch_size,
            self.patch_size,
            0,
            bias=True,
            db=db,
        )
        n = batch * g * g * d * db
        c.hold(n)  # the patch embeddings
        pos_resized = 0
        if self.use_abs_pos:
            trained = self.img_size // self.patch_size
            # The trained table is read once: by the add when the grid matches, else by the resize (or the
            # float32 cast before it) -- trained^2 x embed_dim elements at the model's dtype either way.
            c.weight_read(sub(path, "pos_embed"), "pos_embed", trained * trained * d, db)
            table, grid_elems = trained * trained * d, g * g * d
            if g != trained:  # float32 copy of the 64x64 table (its read: above), bicubic resize, cast back
                if profile.vision_resize_casts == "always" or db != 4:
                    c.traffic(sub(path, "pos_embed_cast"), "_to_copy", 0, table * 4)
                    resize = (table * 4, grid_elems * 4)
                    interp = sub(path, "pos_embed_interp")
                    c.elementwise(interp, "bicubic", grid_elems, EW["bicubic"], db, traffic=resize)
                    c.copy(sub(path, "pos_embed_cast_back"), "_to_copy", grid_elems, db, read_db=4)
                    c.spike(table * 4 + grid_elems * 4)  # the float32 table and its resized copy
                else:  # official get_abs_pos_sam in float32: .to(torch.float32) is no copy, the resize reads the table
                    resize = (0, grid_elems * 4)
                    interp = sub(path, "pos_embed_interp")
                    c.elementwise(interp, "bicubic", grid_elems, EW["bicubic"], db, traffic=resize)
                pos_resized = grid_elems * db
                c.hold(pos_resized)
            # x + pos: the positions are broadcast over the batch (read once; the trained table's read is above)
            add = (batch * grid_elems * db + (grid_elems * db if g != trained else 0), batch * grid_elems * db)
            c.elementwise(sub(path, "pos_embed_add"), "add", batch * grid_elems, EW["add"], db, traffic=add)
            c.hold(n)
            c.release(n + pos_resized)  # the patch embeddings and the resized table die with the sum
        blocks: tuple[SamBlock, ...] = self._blocks  # type: ignore[attr-defined]
        if c.want_records:
            for i, blk in enumerate(blocks):
                blk.evaluate(c, batch, g, profile, db, sub(path, f"blocks.{i}"))
        else:
            for blk, n in group(blocks):
                one = Cost()
                blk.evaluate(one, batch, g, profile, db, None)
                c.add(one, n)
        np_ = sub(path, "neck")
        oc = self.out_chans
        o1 = batch * g * g * oc * db
        # neck and downsampling: each output replaces the one before it (the blocks' output lives through the neck)
        stats = profile.norm_stats_bytes(db)

        def neck_norm(path: str | None) -> None:
            if profile.sam_neck_norm == "layer_norm":
                layer_norm(c, path, batch * g * g, oc, db, stats)
            else:
                layer_norm_2d(c, path, batch * g * g, oc, db)

        c.conv2d(sub(np_, "0"), batch, d, g, g, oc, 1, 1, 0, bias=False, db=db)
        c.hold(o1)
        neck_norm(sub(np_, "1"))
        c.release(o1)
        c.conv2d(sub(np_, "2"), batch, oc, g, g, oc, 3, 1, 1, bias=False, db=db)
        c.hold(o1)
        neck_norm(sub(np_, "3"))
        c.release(o1 + o1 + n)  # the convolution, the first norm and the blocks' output
        c2, c3 = self.downsample_channels
        g2, _ = c.conv2d(sub(path, "net_2"), batch, oc, g, g, c2, 3, 2, 1, bias=False, db=db)
        c.hold(batch * g2 * g2 * c2 * db)
        c.release(o1)
        if profile.sam_net3_clone:  # official ImageEncoderViT.forward: self.net_3(x2.clone())
            c.copy(sub(path, "net_2_clone"), "clone", batch * c2 * g2 * g2, db)
            c.spike(batch * c2 * g2 * g2 * db)
        g3, _ = c.conv2d(sub(path, "net_3"), batch, c2, g2, g2, c3, 3, 2, 1, bias=False, db=db)
        c.hold(batch * g3 * g3 * c3 * db)
        c.release(batch * g2 * g2 * c2 * db)
        return g3
