"""SAM-B image encoder (official deepencoder.py `ImageEncoderViT`; transformers
`UnlimitedOcrSamVisionEncoder`): patch conv, abs-pos interpolation, windowed and global
blocks with decomposed relative positions, neck, net_2, net_3.

FLOPs are identical in both implementations; only the attention kernel family can differ
(SDPA with a float bias mask, or the eager pair of matmuls of the transformers class).
Where the implementations' copies and liveness differ, each profile mode is a small term
(`_QKV_SPLITS`, `_REL_POS_TABLES`, `_REL_POS_BIAS`, `_NECK_NORMS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import (
    ConfigError,
    group,
    layer_norm,
    output_permute_copies,
    resize_casts,
    vision_attention,
)
from core.profiles import ImplProfile


@dataclass(frozen=True)
class _Views:
    """One block call's sizes: the grid's ``tokens`` and the attention's ``views`` of side x side tokens (the padded
    windows, or the grid itself)."""

    tokens: int
    dim: int
    heads: int
    views: int
    side: int
    db: int

    @property
    def hd(self) -> int:
        return self.dim // self.heads

    @property
    def seq(self) -> int:
        return self.side * self.side

    @property
    def rows(self) -> int:
        return self.views * self.seq

    @property
    def n(self) -> int:
        """Bytes of one (B, g, g, d) activation."""
        return self.tokens * self.dim * self.db

    @property
    def r(self) -> int:
        """Bytes of one activation over the attention's views (the padded windows, or the grid)."""
        return self.rows * self.dim * self.db

    @property
    def einsum_out(self) -> int:
        """Elements of one rel-pos einsum's output."""
        return self.views * self.heads * self.seq * self.side

    @property
    def bias(self) -> int:
        """Elements of the (seq x seq per head) rel-pos mask."""
        return self.views * self.heads * self.seq * self.seq


@dataclass(frozen=True)
class _QkvSplit:
    """One `ImplProfile.sam_qkv` mode: whether q, k, v are copies of the qkv output (given the attention's views),
    and how many copies of q the rel-pos einsums make (given whether q was copied and whether windowed)."""

    copies: Callable[[int], bool]
    query_copies: Callable[[bool, bool], int]


_QKV_SPLITS = {
    # hf: reshape(...).permute(2, 0, 3, 1, 4) made contiguous -> q, k, v; reshaped_query = query.reshape(B, h, w, dim):
    # a copy of q (twice for a global block, the second einsum's operand permuted again)
    "permute_copy": _QkvSplit(lambda views: True, lambda q_copied, windowed: 1 if windowed else 2),
    # official Attention.forward: qkv.reshape(3, B * nHead, H * W, -1) of the permuted qkv merges B and the heads, a
    # view only when B is 1; add_decomposed_rel_pos: the first einsum copies its permuted operand, the second only
    # when q is still a strided view of the qkv output (B = 1)
    "merged_reshape": _QkvSplit(lambda views: views > 1, lambda q_copied, windowed: 1 + (not q_copied)),
}


def _resize_in_dtype(c: Cost, path: str | None, hd: int, max_rel: int, db: int, rows_l: int, casts: bool) -> None:
    """transformers' get_rel_pos: the linear resize in the model's dtype (its read: the table read)."""
    c.traffic(sub(path, "resized"), "upsample_linear1d", 0, max_rel * hd * db)


def _resize_in_float32(c: Cost, path: str | None, hd: int, max_rel: int, db: int, rows_l: int, casts: bool) -> None:
    """Official get_rel_pos: rel_pos.to(float32) (its read: the table read), linear resize, .to(dtype); no copies
    when the casts are none (float32)."""
    if not casts:
        _resize_in_dtype(c, path, hd, max_rel, db, rows_l, casts)
        return
    c.traffic(sub(path, "cast"), "_to_copy", 0, rows_l * hd * 4)
    c.traffic(sub(path, "resized"), "upsample_linear1d", rows_l * hd * 4, max_rel * hd * 4)
    c.copy(sub(path, "cast_back"), "_to_copy", max_rel * hd, db, read_db=4)


@dataclass(frozen=True)
class _RelPosTable:
    """One `ImplProfile.rel_pos_table` mode: whether a table of 2 x side - 1 rows is gathered from directly, and the
    resize otherwise."""

    gathers_when_sized: bool
    resize: Callable[[Cost, str | None, int, int, int, int, bool], None]


_REL_POS_TABLES = {
    "interpolate_always": _RelPosTable(False, _resize_in_dtype),
    "gather_when_sized": _RelPosTable(True, _resize_in_float32),
}


def _summed_terms(c: Cost, ap: str | None, v: _Views, q_copied: bool) -> int:
    """transformers: rel_h[..., None] + rel_w[..., None, :] of the einsum outputs; nothing kept past the sum."""
    c.spike(2 * v.einsum_out * v.db + v.r // 3)  # rel_h, rel_w and a query copy (q is a third of qkv)
    return 0


def _reshaped_terms(c: Cost, ap: str | None, v: _Views, q_copied: bool) -> int:
    """Official: rel_h.reshape(B, q_h * q_w, k_h, 1) and rel_w.reshape(B, q_h * q_w, 1, k_w) of the permuted einsum
    outputs: one copy each; (rel_h + rel_w).view(...) is the mask itself.  Returns the bytes it keeps.

    add_decomposed_rel_pos's locals: the gathered Rh and Rw (side x side rows of hd each) live until it returns;
    the first einsum's operand copy (q's bytes: r / 3 x 3 = rows x d) dies with it, the second einsum's (when q is
    a strided view) next to both outputs; then each reshape copies its output while the other output is alive (3
    outputs' worth); the reshaped copies stay Attention.forward's rel_h and rel_w until it returns."""
    c.copy(sub(ap, "rel_pos_terms"), "clone", 2 * v.einsum_out, v.db)
    e = v.einsum_out * v.db
    gathers = 2 * v.side * v.side * v.hd * v.db
    c.spike(gathers + max(v.r + e + (0 if q_copied else e), 3 * e))
    c.hold(2 * e)
    return 2 * e


def _contiguous_mask(c: Cost, ap: str | None, v: _Views) -> None:
    """transformers: the sum's layout is not the (B, nHead, HW, HW) one, so reshape copies it: both live at once,
    then the copy alone stays -- the block's (and SAM's) high-water mark."""
    c.copy(sub(ap, "rel_pos_bias_contiguous"), "clone", v.bias, v.db)
    c.spike(v.bias * v.db)


def _mask_is_the_sum(c: Cost, ap: str | None, v: _Views) -> None:
    """Official: the sum of the reshaped terms is the mask as it is."""


def _output_permute(c: Cost, ap: str | None, v: _Views, copies: bool) -> None:
    """x.view(B, nHead, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1): a copy unless SDPA returned the
    output in the query's layout and q was a strided view (vision_sdpa_output)."""
    if copies:
        c.copy(sub(ap, "attn_output_permute"), "clone", v.rows * v.dim, v.db)
        c.spike(v.r)  # the permuted copy next to the attention output


def _output_replacing_x(c: Cost, ap: str | None, v: _Views, copies: bool) -> None:
    """transformers: the attention output dies as proj runs."""
    _output_permute(c, ap, v, copies)
    c.spike(v.r)  # the attention output
    c.linear(sub(ap, "proj"), v.rows, v.dim, v.dim, bias=True, db=v.db)
    c.hold(v.r)


def _output_keeping_x(c: Cost, ap: str | None, v: _Views, copies: bool) -> None:
    """deepencoder.py Attention.forward: the attention output is x (or the permuted copy that replaces it) until
    x = self.proj(x) replaces it."""
    c.hold(v.r)
    _output_permute(c, ap, v, copies)
    c.linear(sub(ap, "proj"), v.rows, v.dim, v.dim, bias=True, db=v.db)
    c.hold(v.r)
    c.release(v.r)


@dataclass(frozen=True)
class _RelPosBias:
    """One `ImplProfile.sam_rel_pos_bias` mode: the terms before their sum (returns the bytes it keeps), what becomes
    of the sum, and how Attention.forward ends (whether x stays bound through proj)."""

    terms: Callable[[Cost, str | None, _Views, bool], int]
    mask: Callable[[Cost, str | None, _Views], None]
    output: Callable[[Cost, str | None, _Views, bool], None]


_REL_POS_BIAS = {
    "contiguous": _RelPosBias(_summed_terms, _contiguous_mask, _output_replacing_x),
    "reshaped_terms": _RelPosBias(_reshaped_terms, _mask_is_the_sum, _output_keeping_x),
}


def _window_partition(c: Cost, path: str | None, v: _Views) -> None:
    """F.pad, then the windows' permute made contiguous."""
    c.traffic(sub(path, "window_pad"), "constant_pad_nd", v.tokens * v.dim * v.db, v.rows * v.dim * v.db)
    c.copy(sub(path, "window_partition"), "clone", v.rows * v.dim, v.db)
    c.spike(2 * v.r)  # the padded grid and its contiguous windows, next to the normed grid
    c.hold(v.r)
    c.release(v.n)  # the normed grid dies when the windows replace it


def _window_unpartition(c: Cost, path: str | None, v: _Views) -> None:
    """window_unpartition's permute made contiguous, then [:, :H, :W] made contiguous."""
    c.copy(sub(path, "window_unpartition"), "clone", v.rows * v.dim, v.db)
    c.copy(sub(path, "window_crop"), "clone", v.tokens * v.dim, v.db)
    c.release(v.r)  # the windows (the attention's input)
    c.spike(v.r + v.n)  # the unpartitioned copy and the cropped one, next to the projection
    c.hold(v.n)
    c.release(v.r)  # the projection, replaced by the cropped grid


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
        v = self._views(batch, grid, db)
        layer_norm(c, sub(path, "norm1"), v.tokens, v.dim, db, profile.norm_stats_bytes(db))
        if self.window > 0:
            _window_partition(c, path, v)
        self._attention(c, v, profile, sub(path, "attn"))
        if self.window > 0:
            _window_unpartition(c, path, v)
        else:
            c.release(v.n)  # the normed grid (the attention's input)
        self._mlp(c, v, profile, path)

    def _views(self, batch: int, grid: int, db: int) -> _Views:
        """The attention's views: window_partition pads the grid up to a multiple of the window (64->70, 40->42,
        ...); a global block attends over the grid itself."""
        tokens = batch * grid * grid
        if self.window > 0:
            padded = -(-grid // self.window) * self.window
            return _Views(tokens, self.dim, self.num_heads, batch * (padded // self.window) ** 2, self.window, db)
        return _Views(tokens, self.dim, self.num_heads, batch, grid, db)

    def _attention(self, c: Cost, v: _Views, profile: ImplProfile, ap: str | None) -> None:
        """Attention.forward: qkv, the q/k/v split, the rel-pos mask, the kernel, the output and proj.  Liveness:
        its locals die when it returns; proj's output is held."""
        c.linear(sub(ap, "qkv"), v.rows, v.dim, 3 * v.dim, bias=self.qkv_bias, db=v.db)
        c.hold(3 * v.r)
        q_copied = _QKV_SPLITS[profile.sam_qkv].copies(v.views)
        qkv_copied = 3 * v.r if q_copied else 0
        if q_copied:
            c.copy(sub(ap, "qkv_permute"), "clone", v.rows * 3 * v.dim, v.db)
            c.hold(qkv_copied)
        bias_bytes = terms_held = 0
        if self.use_rel_pos:
            bias_bytes, terms_held = self._rel_pos(c, v, profile, ap, q_copied)
        vision_attention(c, ap, v.views, v.heads, v.seq, v.hd, profile.vision_attention, v.db)
        _REL_POS_BIAS[profile.sam_rel_pos_bias].output(c, ap, v, output_permute_copies(profile, q_copied))
        c.release(3 * v.r + qkv_copied + bias_bytes + terms_held)  # the attention's locals die when it returns

    def _rel_pos(self, c: Cost, v: _Views, profile: ImplProfile, ap: str | None, q_copied: bool) -> tuple[int, int]:
        """The decomposed relative positions as the attention's mask; returns the bytes of the mask and of the terms
        kept with it (both live until the attention returns)."""
        self._rel_pos_tables(c, v, profile, ap)
        # reshaped_query = query.reshape(B, h, w, dim) (copies: `_QKV_SPLITS`), then einsum("bhwc,hkc->bhwk") and
        # einsum("bhwc,wkc->bhwk")
        n_query = _QKV_SPLITS[profile.sam_qkv].query_copies(q_copied, self.window > 0)
        side, hd, db = v.side, v.hd, v.db
        c.copy(sub(ap, "rel_pos_query"), "clone", v.rows * v.dim * n_query, db)
        c.bmm(sub(ap, "rel_pos_h"), "einsum_bhwc_hkc", side, v.views * v.heads * side, hd, side, db=db)
        c.bmm(sub(ap, "rel_pos_w"), "einsum_bhwc_wkc", side, v.views * v.heads * side, hd, side, db=db)
        # rel_h[..., None] + rel_w[..., None, :] builds the (seq x seq) bias (read broadcast: 2 einsum outputs),
        # made contiguous for SDPA, which adds it to the scores (the second add) and reads it.
        mode = _REL_POS_BIAS[profile.sam_rel_pos_bias]
        terms_held = mode.terms(c, ap, v, q_copied)
        bias, traffic = v.bias, (2 * v.einsum_out * db, v.bias * db)
        c.elementwise(sub(ap, "rel_pos_bias"), "add", bias, 2 * EW["add"], db, traffic=traffic)
        c.hold(bias * db)  # the mask lives until the attention returns
        mode.mask(c, ap, v)
        c.traffic(sub(ap, "sdpa_mask_read"), "scaled_dot_product_attention", bias * db, 0)
        return bias * db, terms_held

    def _rel_pos_tables(self, c: Cost, v: _Views, profile: ImplProfile, ap: str | None) -> None:
        """get_rel_pos, once per table (h, w): the table (L rows of head_dim) is read by the linear resize (hf:
        always; official: when L != 2 x side - 1), else gathered row by row (side x side rows)."""
        rows_l = 2 * (self.window or self.trained_grid) - 1
        from_table = rows_l == 2 * v.side - 1 and _REL_POS_TABLES[profile.rel_pos_table].gathers_when_sized
        read = v.side * v.side if from_table else rows_l
        c.weight_read(sub(ap, "rel_pos_tables"), "get_rel_pos", 2 * read * v.hd, v.db)
        casts = resize_casts(profile, v.db)
        for axis in ("h", "w"):
            path = sub(ap, f"rel_pos_{axis}_table")
            _rel_pos_gather(c, path, v.side, v.hd, 2 * v.side - 1, from_table, v.db, rows_l, casts, profile)

    def _mlp(self, c: Cost, v: _Views, profile: ImplProfile, path: str | None) -> None:
        """The first residual, norm2, the MLP (on the unpadded grid: window_unpartition crops the padding first) and
        the second residual.  Liveness: the block's output is held."""
        tokens, d, db, n = v.tokens, v.dim, v.db, v.n
        c.elementwise(sub(path, "residual1"), "add", tokens * d, EW["add"], db, reads=2)
        c.hold(n)
        c.release(n)  # the attention's output
        layer_norm(c, sub(path, "norm2"), tokens, d, db, profile.norm_stats_bytes(db))
        mp = sub(path, "mlp")
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
    (side x side each, float32).  The resize is the profile's (`_REL_POS_TABLES`; none given: transformers')."""
    c.elementwise_flops += 2 * side + 2 * side * side
    if not from_table:
        c.elementwise_flops += EW["linear_resize"] * max_rel * hd
        resize = _resize_in_dtype if profile is None else _REL_POS_TABLES[profile.rel_pos_table].resize
        resize(c, path, hd, max_rel, db, rows_l, casts)
    # arange x2 (int64), x scale x2 (float32 out), q - k, + offset (side x side float32), .long() (int64)
    ends = 2 * side * 8 + 2 * side * 4
    c.traffic(sub(path, "coords"), "arange", ends + 2 * side * side * 4, ends + 2 * side * side * 4 + side * side * 8)
    rows = side * side
    c.traffic(sub(path, "gather"), "index", rows * hd * db * (not from_table) + rows * 8, rows * hd * db)


def _resize_abs_pos(c: Cost, path: str | None, table: int, grid_elems: int, db: int, casts: bool) -> None:
    """The trained table resized to the grid: a float32 copy (its read: the table read), bicubic resize, cast back;
    without the casts (official get_abs_pos_sam in float32) the resize reads the table itself."""
    interp = sub(path, "pos_embed_interp")
    if casts:
        c.traffic(sub(path, "pos_embed_cast"), "_to_copy", 0, table * 4)
        c.elementwise(interp, "bicubic", grid_elems, EW["bicubic"], db, traffic=(table * 4, grid_elems * 4))
        c.copy(sub(path, "pos_embed_cast_back"), "_to_copy", grid_elems, db, read_db=4)
        c.spike(table * 4 + grid_elems * 4)  # the float32 table and its resized copy
    else:
        c.elementwise(interp, "bicubic", grid_elems, EW["bicubic"], db, traffic=(0, grid_elems * 4))


def _mean_var_norm(c: Cost, path: str | None, rows: int, width: int, db: int, stats_db: int) -> None:
    """Official LayerNorm2d op by op (it writes no statistics of its own)."""
    layer_norm_2d(c, path, rows, width, db)


# ImplProfile.sam_neck_norm -> the neck's norm (c, path, rows, channels, db, stats bytes)
_NECK_NORMS: dict[str, Callable[[Cost, str | None, int, int, int, int], None]] = {
    "layer_norm": layer_norm,
    "mean_var": _mean_var_norm,
}


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
        d, ps = self.embed_dim, self.patch_size
        g, _ = c.conv2d(sub(path, "patch_embed"), batch, self.in_chans, size, size, d, ps, ps, 0, bias=True, db=db)
        n = batch * g * g * d * db
        c.hold(n)  # the patch embeddings
        if self.use_abs_pos:
            self._abs_pos(c, batch, g, profile, db, path, n)
        blocks: tuple[SamBlock, ...] = self._blocks  # type: ignore[attr-defined]
        if c.want_records:
            for i, blk in enumerate(blocks):
                blk.evaluate(c, batch, g, profile, db, sub(path, f"blocks.{i}"))
        else:
            # as found: this loop rebinds `n` to the last group's block count, which the neck then releases in place
            # of the blocks' output bytes (the records path above releases the bytes)
            for blk, n in group(blocks):
                one = Cost()
                blk.evaluate(one, batch, g, profile, db, None)
                c.add(one, n)
        o1 = self._neck(c, batch, g, profile, db, path, n)
        return self._downsample(c, batch, g, o1, profile, db, path)

    def _abs_pos(self, c: Cost, batch: int, g: int, profile: ImplProfile, db: int, path: str | None, n: int) -> None:
        """x + pos_embed, the trained table resized when the grid differs; the sum replaces the patch embeddings.
        The trained table is read once: by the add when the grid matches, else by the resize (or the float32 cast
        before it) -- trained^2 x embed_dim elements at the model's dtype either way."""
        d, trained = self.embed_dim, self.img_size // self.patch_size
        c.weight_read(sub(path, "pos_embed"), "pos_embed", trained * trained * d, db)
        table, grid_elems = trained * trained * d, g * g * d
        pos_resized = 0
        if g != trained:
            _resize_abs_pos(c, path, table, grid_elems, db, resize_casts(profile, db))
            pos_resized = grid_elems * db
            c.hold(pos_resized)
        # x + pos: the positions are broadcast over the batch (read once; the trained table's read is above)
        add = (batch * grid_elems * db + (grid_elems * db if g != trained else 0), batch * grid_elems * db)
        c.elementwise(sub(path, "pos_embed_add"), "add", batch * grid_elems, EW["add"], db, traffic=add)
        c.hold(n)
        c.release(n + pos_resized)  # the patch embeddings and the resized table die with the sum

    def _neck(
        self, c: Cost, batch: int, g: int, profile: ImplProfile, db: int, path: str | None, blocks_out: int
    ) -> int:
        """The neck: conv 1x1, norm, conv 3x3, norm (each output replaces the one before it; the blocks' output,
        ``blocks_out`` bytes, lives through the neck); returns the bytes of its output, which stays held."""
        np_, oc = sub(path, "neck"), self.out_chans
        o1 = batch * g * g * oc * db
        norm, stats = _NECK_NORMS[profile.sam_neck_norm], profile.norm_stats_bytes(db)
        c.conv2d(sub(np_, "0"), batch, self.embed_dim, g, g, oc, 1, 1, 0, bias=False, db=db)
        c.hold(o1)
        norm(c, sub(np_, "1"), batch * g * g, oc, db, stats)
        c.release(o1)
        c.conv2d(sub(np_, "2"), batch, oc, g, g, oc, 3, 1, 1, bias=False, db=db)
        c.hold(o1)
        norm(c, sub(np_, "3"), batch * g * g, oc, db, stats)
        c.release(o1 + o1 + blocks_out)  # the convolution, the first norm and the blocks' output
        return o1

    def _downsample(self, c: Cost, batch: int, g: int, o1: int, profile: ImplProfile, db: int, path: str | None) -> int:
        """net_2 and net_3 (each output replaces the one before it); returns net_3's grid side."""
        oc, (c2, c3) = self.out_chans, self.downsample_channels
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
