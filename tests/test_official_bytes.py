"""Bytes of the official code's op sequences, derived by hand on small shapes (the `official` profile's terms).

Each figure is the op-by-op sum the vendor meter reports (`core.op_rules`): every tensor input read
plus every output written, int64 indices 8 bytes, bools 1 byte, float32 4.
"""

from analytic import VisionWorkload
from analytic.composites import image_layout
from analytic.costs import Cost
from analytic.layers.clip import ClipEncoder
from analytic.layers.decoder import _moe_infer_bookkeeping, prepare_4d_mask_traffic
from analytic.layers.sam import SamBlock, layer_norm_2d
from core.profiles import ImplProfile
from tests.test_analytic_layers import profile as layer_profile


def profile(**kw) -> ImplProfile:
    """The layer tests' profile with the official code's decoder choices."""
    official = dict(rope="per_layer_matmul", experts="per_expert_mlp", decoder_attn_impls=("eager",))
    return layer_profile(**{**official, "lm_head_default": "all", **kw})


OFFICIAL_SAM = dict(sam_qkv="merged_reshape", sam_rel_pos_bias="reshaped_terms", vision_sdpa_output="like_query")


def test_layer_norm_2d_op_by_op():
    # 4 pixels x 3 channels in bfloat16: n = 12.  mean (reads 12, writes 4), x - u (12 + 4 -> 12),
    # pow (12 -> 12), mean (12 -> 4), x - u (12 + 4 -> 12), s + eps (4 -> 4), sqrt (4 -> 4), / (12 + 4 -> 12),
    # weight * x (3 + 12 -> 12), + bias (12 + 3 -> 12): reads 8*12 + 5*4 = 116 elements + 6 weights,
    # writes 6*12 + 4*4 = 88.
    c = Cost()
    layer_norm_2d(c, None, 4, 3, 2)
    assert (c.io_bytes, c.activation_bytes, c.weight_bytes) == ((116 + 6 + 88) * 2, 88 * 2, 6 * 2)
    assert c.elementwise_flops == 8 * 12 + 2 * 4  # 8 per element, add and sqrt per pixel


def test_prepare_4d_mask_decode_step_matches_a_measured_one():
    # One query over 87 keys in float32 (measured on the official code, tiny mode, first decode step):
    # mask.expand(...).to(float32) reads 87 int64 (696) writes 87*4 (348); 1.0 - x 348 -> 348; .to(bool) 348 -> 87;
    # masked_fill reads 348 + 87, writes 348.  io 1044 + 696 + 435 + 783 = 2958.
    reads, writes = prepare_4d_mask_traffic(1, 87, 4)
    assert (reads, writes) == (696 + 348 + 348 + 435, 348 + 348 + 87 + 348)
    assert reads + writes == 2958


def test_prepare_4d_mask_prefill_in_bfloat16():
    # q = keys = 3, bfloat16.  _make_causal_mask: full (3x3 float32: writes 36), arange (24), + 1 (24 -> 24),
    # < (reads 24 + 24, writes 9 bools), masked_fill_ (reads 36 + 9, writes 36), .to(bf16) (36 -> 18).
    # _expand_mask: .to(bf16) of the expanded int64 mask (reads 3*8, writes 9*2), 1.0 - x (18 -> 18),
    # .to(bool) (18 -> 9), masked_fill (18 + 9 -> 18); then .bool() (18 -> 9) and masked_fill (18 + 9 -> 18).
    reads = 24 + 48 + 45 + 36 + 24 + 18 + 18 + 27 + 18 + 27
    writes = 36 + 24 + 24 + 9 + 36 + 18 + 18 + 18 + 9 + 18 + 9 + 18
    assert prepare_4d_mask_traffic(3, 3, 2) == (reads, writes)


def test_moe_infer_bookkeeping_bfloat16():
    # 2 rows, top-2 of 4 experts, hidden 3, bfloat16: 4 pairs, 12 pair elements.
    c = Cost()
    _moe_infer_bookkeeping(c, None, 2, 4, 3, 4, 2)
    reads = (
        (2 * 4 * 8 + 4 * 8)  # scatter_ into the (2 x 4) int64 counts, reading the 4 indices (new_zeros reads none)
        + 2 * 4 * 8  # counts.sum(0)
        + 4 * 8  # argsort
        + 4 * 8  # // k
        + (12 * 2 + 4 * 8)  # x[idx]: the gathered rows and the index
        + 12 * 2  # cat of the expert outputs
        + (12 * 2 + 4 * 8)  # new_x[idxs] = outs (empty_like reads nothing)
        + 12 * 2  # .type(float32)
        + (12 * 4 + 4 * 4)  # mul_ in place: the float32 rows and the 4 weights
        + 12 * 4  # sum over k
        + 2 * 3 * 4  # .type(bf16)
    )
    writes = (
        2 * 4 * 8 * 2  # new_zeros, scatter_
        + 4 * 8  # the 4 per-expert counts
        + 2 * 4 * 8  # sorted values and indices
        + 4 * 8
        + 12 * 2  # gathered rows
        + 12 * 2  # cat
        + 2 * 12 * 2  # empty_like, index_put_
        + (12 * 4 + 12 * 4)  # float32 copy, mul_
        + (2 * 3 * 4 + 2 * 3 * 2)  # sum, cast back
    )
    assert (c.io_bytes, c.activation_bytes) == (reads + writes, writes)
    assert c.elementwise_flops == 2 * 12  # mul_ and the sum's add per pair element


def test_moe_infer_bookkeeping_matches_a_measured_decode_step():
    # One token, top-6 of 64 experts, hidden 1280, float32 (official code, measured): new_zeros 512, scatter_ 1072,
    # sum 1024, sort 144, // 96, index 61488, cat 61440, empty_like 30720, index_put_ 61488, mul_ 61464, sum 35840.
    c = Cost()
    _moe_infer_bookkeeping(c, None, 1, 6, 1280, 64, 4)
    assert c.io_bytes == 512 + 1072 + 1024 + 144 + 96 + 61488 + 61440 + 30720 + 61488 + 61464 + 35840


def _sam_bytes(batch: int, grid: int, window: int, **kw) -> Cost:
    c = Cost()
    blk = SamBlock(dim=8, num_heads=2, mlp_dim=16, window=window, trained_grid=grid)
    blk.evaluate(c, batch, grid, profile(rel_pos_table="gather_when_sized", **kw), 2, None)
    return c


def test_official_sam_global_block_single_view():
    # Global block, one view of 5x5 (rows 25, dim 8, 2 heads of 4), bfloat16.  hf: the permuted qkv made contiguous
    # (25*24), two query copies (2*25*8), the bias made contiguous (2*25*25), the output permute copy (25*8).
    # Official: reshape(3, B*nH, HW, -1) is a view for B = 1, the query is copied for each einsum (2*25*8), both
    # einsum outputs are reshaped with a copy (2 * 2*25*5), the bias is the sum itself, and SDPA's output (in the
    # query's strided layout) needs no copy.
    hf, off = _sam_bytes(1, 5, 0), _sam_bytes(1, 5, 0, **OFFICIAL_SAM)
    copies = 25 * 24 + 2 * 25 * 25 + 25 * 8 - 2 * 2 * 25 * 5  # hf-only minus official-only copied elements
    assert hf.activation_bytes - off.activation_bytes == copies * 2
    assert hf.io_bytes - off.io_bytes == 2 * copies * 2  # a copy reads what it writes


def test_official_sam_global_block_two_views():
    # Two views: the merged reshape copies q/k/v (q contiguous after it), so only the first einsum copies its
    # operand, and SDPA returns a contiguous output that the permute copies.  hf - official: one query copy
    # (2*25*8) + the bias copy (2*2*25*25) - the two reshaped terms (2 * 2*2*25*5).
    hf, off = _sam_bytes(2, 5, 0), _sam_bytes(2, 5, 0, **OFFICIAL_SAM)
    copies = 2 * 25 * 8 + 2 * 2 * 25 * 25 - 2 * 2 * 2 * 25 * 5
    assert hf.activation_bytes - off.activation_bytes == copies * 2


def test_official_sam_window_block():
    # Grid 4 in windows of 3: padded to 6, 4 windows of 9 (rows 36).  Both copy q/k/v and the output; official
    # copies the query once (hf: once too) and the two einsum outputs (2 * 4*2*9*3) instead of the bias (4*2*81).
    hf, off = _sam_bytes(1, 4, 3), _sam_bytes(1, 4, 3, **OFFICIAL_SAM)
    assert hf.activation_bytes - off.activation_bytes == (4 * 2 * 81 - 2 * 4 * 2 * 9 * 3) * 2


def test_official_clip_positions_resized():
    # CLIP width 4, no layers, trained grid 2 (4 + 1 positions), SAM grid 3 (seq 10), batch 1, bfloat16.
    enc = ClipEncoder(hidden_size=4, num_layers=0, num_heads=2, ffn_hidden_size=8, pretrain_grid=2)
    c = Cost()
    enc.evaluate(c, 1, 3, profile(clip_positions="gather_then_resize", vision_resize_casts="when_not_float32"), 2)
    weights = 5 * 4 * 2 + 4 * 2 + 5 * 8  # the position table gathered, the class embedding, the int64 position_ids
    cat_class = (9 * 4 * 2, 10 * 4 * 2)  # cat([class, 9 patch rows]) -> 10 rows
    gather = (0, 5 * 4 * 2)  # the embedding writes all 5 positions (its reads: the weights above)
    contiguous = (4 * 4 * 2, 4 * 4 * 2)  # the 2x2 grid rows, permuted, made contiguous
    cast = (4 * 4 * 2, 4 * 4 * 4)  # .to(float32)
    resize = (4 * 4 * 4, 9 * 4 * 4)  # bicubic 2x2 -> 3x3
    cast_back = (9 * 4 * 4, 9 * 4 * 2)
    cat_cls = ((9 + 1) * 4 * 2, 10 * 4 * 2)  # cat([CLS position, 9 resized])
    add = (10 * 4 * 2 + 10 * 4 * 2, 10 * 4 * 2)  # embeddings + positions
    norm = (10 * 4 * 2, 10 * 4 * 2 + 2 * 10 * 4)  # pre_layrnorm: y and float32 mean/rstd per row
    ops = (cat_class, gather, contiguous, cast, resize, cast_back, cat_cls, add, norm)
    assert c.io_bytes == weights + 2 * 4 * 2 + sum(r + w for r, w in ops)  # + the norm's weight and bias
    assert c.activation_bytes == sum(w for _, w in ops)
    assert c.weight_bytes == weights + 2 * 4 * 2


def test_official_image_layout_gundam_a4():
    # A4 page in gundam mode: 2 x 3 crops of 640 (10 x 10 queries each) and the 1024 global view (16 x 16);
    # projector input 128, decoder width 32, float32; prefill = 1 + 903 + 12 = 916 positions.
    w = VisionWorkload.from_page(1654, 2339, "gundam", prompt_tokens=12)
    c = Cost()
    image_layout(c, w, 32, 128, 4, None)
    ops = [
        (256 * 128 * 4, 256 * 128 * 4),  # cat((clip[:, 1:], sam.flatten(2).permute(0, 2, 1)), -1), global view
        (256 * 32 * 4, 16 * 17 * 32 * 4),  # cat with the newline column: 16 rows of 16 + 1
        (600 * 128 * 4, 600 * 128 * 4),  # the crops' feature cat: 6 x 100 rows
        (600 * 32 * 4, 600 * 32 * 4),  # view/permute/reshape of the 2-column grid: a copy
        (600 * 32 * 4, 30 * 21 * 32 * 4),  # newline column: 30 rows of 20 + 1
        ((630 + 272) * 32 * 4, 903 * 32 * 4),  # cat([crops, global, separator])
        (903 * 32 * 4, 903 * 32 * 4),  # cat of the one-image list
        (916 + 903 * 32 * 4, 916 * 32 * 4),  # masked_scatter_: bool mask and image rows in, the embeddings out
    ]
    weights = 3 * 32 * 4  # image_newline twice, view_seperator once
    assert c.io_bytes == weights + sum(r + w for r, w in ops)
    assert c.activation_bytes == sum(w for _, w in ops)
    assert c.weight_bytes == weights


def test_official_image_layout_one_column_grid_has_no_permute_copy():
    w = VisionWorkload.from_page(800, 2400, "gundam", prompt_tokens=12)
    assert (w.w_crop, w.h_crop) == (1, 3)
    a = Cost()
    image_layout(a, w, 32, 128, 4, None)
    # view(3, 1, 10, 10, n).permute(0, 2, 1, 3, 4).reshape(30, 10, n) is a view: no 300 x 32 copy
    crops, global_rows = 300, 256
    expected_act = (global_rows * 128 + 16 * 17 * 32 + crops * 128 + 30 * 11 * 32 + 2 * w.n_image_tokens * 32) * 4
    assert a.activation_bytes == expected_act + w.prefill_len * 32 * 4
