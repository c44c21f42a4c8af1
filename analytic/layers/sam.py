"""SAM-B image encoder (official deepencoder.py `ImageEncoderViT`; transformers
`UnlimitedOcrSamVisionEncoder`): patch conv, abs-pos interpolation, windowed and global
blocks with decomposed relative positions, neck, net_2, net_3.

FLOPs are identical in both implementations; only the attention kernel family can differ
(SDPA with a float bias mask, or the eager pair of matmuls of the transformers class).
"""

from __future__ import annotations

from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import ConfigError, group, vision_attention
from analytic.profiles import ImplProfile


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
        tokens = batch * grid * grid
        d, nh = self.dim, self.num_heads
        hd = d // nh
        c.elementwise(sub(path, "norm1"), "layernorm", tokens * d, EW["layernorm"], db, weight_elems=2 * d)
        if self.window > 0:
            # window_partition pads the grid up to a multiple of the window (64->70, 40->42, ...).
            padded = -(-grid // self.window) * self.window
            n_views = batch * (padded // self.window) ** 2
            side = self.window
        else:
            n_views, side = batch, grid
        seq = side * side
        rows = n_views * seq
        ap = sub(path, "attn")
        c.linear(sub(ap, "qkv"), rows, d, 3 * d, bias=self.qkv_bias, db=db)
        if self.use_rel_pos:
            # get_rel_pos, once per table (h, w): the table (L rows of head_dim) is read by the linear resize
            # (hf: always; official: when L != 2 x side - 1), else gathered row by row (side x side rows).
            rows_l = 2 * (self.window or self.trained_grid) - 1
            sized = rows_l == 2 * side - 1
            read = side * side if sized and profile.rel_pos_table == "gather_when_sized" else rows_l
            c.weight_read(sub(ap, "rel_pos_tables"), "get_rel_pos", 2 * read * hd, db)
            # einsum("bhwc,hkc->bhwk") and einsum("bhwc,wkc->bhwk"): bmm over the h (resp. w) axis.
            c.bmm(sub(ap, "rel_pos_h"), "einsum_bhwc_hkc", side, n_views * nh * side, hd, side, db=db)
            c.bmm(sub(ap, "rel_pos_w"), "einsum_bhwc_wkc", side, n_views * nh * side, hd, side, db=db)
            # rel_h + rel_w broadcast add builds the (seq x seq) bias; added to the scores.
            c.elementwise(sub(ap, "rel_pos_bias"), "add", n_views * nh * seq * seq, 2 * EW["add"], db)
        vision_attention(c, ap, n_views, nh, seq, hd, profile.vision_attention, db)
        c.linear(sub(ap, "proj"), rows, d, d, bias=True, db=db)
        c.elementwise(sub(path, "residual1"), "add", tokens * d, EW["add"], db, reads=2)
        c.elementwise(sub(path, "norm2"), "layernorm", tokens * d, EW["layernorm"], db, weight_elems=2 * d)
        mp = sub(path, "mlp")
        # The MLP runs on the unpadded grid (window_unpartition crops the padding first).
        c.linear(sub(mp, "lin1"), tokens, d, self.mlp_dim, bias=True, db=db)
        c.elementwise(sub(mp, "act"), "gelu", tokens * self.mlp_dim, EW["gelu"], db)
        c.linear(sub(mp, "lin2"), tokens, self.mlp_dim, d, bias=True, db=db)
        c.elementwise(sub(path, "residual2"), "add", tokens * d, EW["add"], db, reads=2)


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

    def output_grid(self, size: int) -> int:
        """Spatial side of net_3's output for an input of `size` pixels (S/64 for DeepSeek-OCR)."""
        g = size // self.patch_size
        for _ in range(2):
            g = (g + 2 - 3) // 2 + 1
        return g

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
        if self.use_abs_pos:
            trained = self.img_size // self.patch_size
            # The trained table is read once: by the add when the grid matches, else by the resize (or the
            # float32 cast before it) -- trained^2 x embed_dim elements at the model's dtype either way.
            c.weight_read(sub(path, "pos_embed"), "pos_embed", trained * trained * d, db)
            if g != trained:  # get_abs_pos_sam: bicubic resize of the 64x64 table (not counted)
                c.elementwise(sub(path, "pos_embed_interp"), "bicubic", g * g * d, EW["bicubic"], db)
            c.elementwise(sub(path, "pos_embed_add"), "add", batch * g * g * d, EW["add"], db, reads=2)
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
        c.conv2d(sub(np_, "0"), batch, d, g, g, oc, 1, 1, 0, bias=False, db=db)
        c.elementwise(sub(np_, "1"), "layernorm", batch * oc * g * g, EW["layernorm"], db, weight_elems=2 * oc)
        c.conv2d(sub(np_, "2"), batch, oc, g, g, oc, 3, 1, 1, bias=False, db=db)
        c.elementwise(sub(np_, "3"), "layernorm", batch * oc * g * g, EW["layernorm"], db, weight_elems=2 * oc)
        c2, c3 = self.downsample_channels
        g2, _ = c.conv2d(sub(path, "net_2"), batch, oc, g, g, c2, 3, 2, 1, bias=False, db=db)
        g3, _ = c.conv2d(sub(path, "net_3"), batch, c2, g2, g2, c3, 3, 2, 1, bias=False, db=db)
        return g3
