"""The analytic liveness model (peak_bytes): composition by hand, and single layers whose high-water mark is
derived by hand from the code's live tensors.  Agreement with the measured peak on whole models is the verify
gate's job (the hf profile gates peak_bytes on every stage)."""

from analytic.costs import Cost, add_stack
from analytic.layers.clip import ClipBlock
from analytic.layers.decoder import MoeMlp, SwiGluMlp
from analytic.layers.sam import SamBlock
from tests.test_analytic_layers import profile


def test_a_stack_peaks_on_its_last_run_when_each_run_leaves_bytes_behind():
    layer = Cost()
    layer.hold(10)  # kept by the layer (e.g. its cache growth)
    layer.spike(5)  # a transient on top: the layer alone peaks at 15
    layer.release(4)  # leaves 6 behind
    assert (layer.peak_bytes, layer.live) == (15, 6)
    stack = Cost()
    stack.hold(100)
    stack.add(layer, 3)
    # runs k = 0, 1, 2 start at 100 + 6k and peak 15 above it: the last one at 100 + 12 + 15 = 127
    assert (stack.peak_bytes, stack.live) == (127, 118)


def test_a_stack_holds_back_the_first_input_its_owner_keeps():
    layer = Cost()
    layer.hold(8)  # its output
    layer.release(8)  # its input, dropped by the caller's loop
    stack = Cost()
    add_stack(stack, [(layer, 3)], 8)
    # the first input is not the stack's to free: layer 0's output stays on top of the level (8), and layer 1 holds
    # its output next to that input before the caller drops it (16)
    assert stack.live == 8 and stack.peak_bytes == 16


def test_sam_global_block_peaks_at_the_relative_position_bias_copy():
    # dim 8, 2 heads, MLP 32, one 4 x 4 grid in bfloat16 (2 bytes): n = 16 tokens * 8 * 2 = 256 bytes per activation
    blk = SamBlock(dim=8, num_heads=2, mlp_dim=32, window=0, trained_grid=4)
    c = Cost()
    blk.evaluate(c, 1, 4, profile(rel_pos_table="interpolate_always", sam_qkv="merged_reshape"), 2, None)
    # live above the block's input at the bias copy: norm1 256 + qkv 3 * 256 + the bias sum and its contiguous copy,
    # 1 view * 2 heads * 16 * 16 scores * 2 bytes = 1,024 each (one view: q, k, v are views, no reshape copy)
    assert c.peak_bytes == 256 + 768 + 2 * 1024
    assert c.live == 0  # the output replaces the input
    # two images: qkv.reshape(3, B * nHead, ...) now copies q, k, v (another 3n), every term doubles
    c2 = Cost()
    blk.evaluate(c2, 2, 4, profile(rel_pos_table="interpolate_always", sam_qkv="merged_reshape"), 2, None)
    assert c2.peak_bytes == 512 + 1536 + 1536 + 2 * 2048


def test_swiglu_peaks_at_the_gated_product():
    # act(gate(x)) * up(x): act (gate's output dies with it), up and the product live together; rows 3, inter 16,
    # float32: 3 * 3 * 16 * 4 = 576 bytes; then the output (3 * 8 * 4 = 96) is held
    c = Cost()
    SwiGluMlp(8, 16).evaluate(c, 3, 4, None)
    assert c.peak_bytes == 576 and c.live == 96


OFFICIAL_VISION = dict(
    rel_pos_table="gather_when_sized",
    sam_qkv="merged_reshape",
    sam_rel_pos_bias="reshaped_terms",
    vision_sdpa_output="like_query",
    clip_positions="gather_then_resize",
)


def test_official_sam_global_block_peaks_at_proj_next_to_its_attention_locals():
    # deepencoder.py Attention.forward on one 4 x 4 grid, dim 8, 2 heads (head_dim 4), bfloat16: one activation
    # n = r = 16 tokens * 8 * 2 = 256 bytes; qkv 3 * 256 = 768 (q, k, v are views: one image); the reshaped rel_h
    # and rel_w copies, 2 heads * 16 queries * 4 keys * 2 bytes = 256 each (512), are still bound; so is the mask,
    # 2 * 16 * 16 * 2 = 1,024 bytes; x (the attention output, a view under like_query) is live while proj writes
    # its output: at proj, above the block's input, norm1 256 + qkv 768 + terms 512 + mask 1,024 + x 256 + proj 256
    blk = SamBlock(dim=8, num_heads=2, mlp_dim=32, window=0, trained_grid=4)
    c = Cost()
    blk.evaluate(c, 1, 4, profile(**OFFICIAL_VISION), 2, None)
    assert c.peak_bytes == 256 + 768 + 512 + 1024 + 256 + 256
    assert c.live == 0  # the output replaces the input


def test_official_clip_block_keeps_its_attention_output_through_the_mlp():
    # NoTPTransformerBlock.forward: residual = self_attn(layer_norm1(x)); h = x + residual;
    # out = h + mlp(layer_norm2(h)).  One view of 5 tokens, dim 8, ffn 32, float32: n = 5 * 8 * 4 = 160,
    # f = 5 * 32 * 4 = 640.  At quick_gelu (fc1's output, 1.702 x and its sigmoid: 3f) residual, h and
    # layer_norm2's output are live: 3n + 3f = 480 + 1,920 (the transformers block drops the attention output at
    # the sum: 2n + 3f)
    blk = ClipBlock(dim=8, num_heads=2, ffn=32)
    official, hf = Cost(), Cost()
    blk.evaluate(official, 1, 5, profile(**OFFICIAL_VISION), 4, None)
    blk.evaluate(hf, 1, 5, profile(clip_qkv="separate"), 4, None)
    assert official.peak_bytes == 3 * 160 + 3 * 640 and hf.peak_bytes == 2 * 160 + 3 * 640
    assert official.live == hf.live == 0


def test_official_moe_infer_peaks_at_its_weighted_sum():
    # DeepseekV2MoE on 3 rows, hidden 8, 4 experts, top-2, float32 (no casts): pairs = 6.  MoEGate returns only
    # topk_idx (3 * 2 int64: 48) and the scaled topk_weight (3 * 2 float32: 24) = 72, held.  moe_infer keeps cnts
    # (3 * 4 int64: 96), tokens_per_expert (4 int64: 32), idxs (6 int64: 48) and sorted_tokens (6 * 8 * 4: 192)
    # = 368; after the loop the outputs (192), their cat (192) and new_x (192) live with the float32 sum over
    # the k rows (3 * 8 * 4: 96): 72 + 368 + 576 + 96
    c = Cost()
    MoeMlp(hidden=8, n_experts=4, top_k=2, expert_intermediate=16, n_shared=0).evaluate(
        c, 3, profile(experts="per_expert_mlp"), 4, None
    )
    assert c.peak_bytes == 72 + 368 + 576 + 96
    assert c.live == 96  # the routed output, returned
