"""The analytic liveness model (peak_bytes): composition by hand, and single layers whose high-water mark is
derived by hand from the code's live tensors.  Agreement with the measured peak on whole models is the verify
gate's job (the hf profile gates peak_bytes on every stage)."""

from analytic.costs import Cost, add_stack
from analytic.layers.decoder import SwiGluMlp
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
