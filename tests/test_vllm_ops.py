"""Backend vllm without vLLM: its ops' charges on hand-built arguments, the foreign-op contract through the audit
and the counter, the model folder it writes, and what the registry and CLIs refuse.  Every expected number is
derived by hand in the comments (docs/backends.md, "vllm"; the formulas in vendor_shim/vllm_engine/ops.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from core.workload import VisionWorkload
from vendor_shim.audit import AuditLog, AuditMode
from vendor_shim.foreign_ops import ForeignCharge, ForeignOp, ForeignOps
from vendor_shim.harness import global_total_counter
from vendor_shim.op_meter import OpMeter
from vendor_shim.vllm_engine import ops

F32 = torch.float32


def test_onednn_mm_is_a_linear_whose_weight_is_the_packed_handle():
    a, c, bias = torch.zeros(3, 4), torch.empty(3, 5), torch.zeros(5)
    got = ops.onednn_mm((c, a, bias, torch.zeros((), dtype=torch.int64)), {}, None)
    # 2*M*K*N = 2*3*4*5; bias add M*N = 15; weight K*N*4 B + bias 5*4 B = 80 + 20
    assert got.tensor_flops == 120 and got.elementwise_flops == 15
    assert got.weight_bytes == 100 and got.read_bytes == 3 * 4 * 4 + 100 and got.write_bytes == 3 * 5 * 4


def test_cpu_fused_moe_reads_the_experts_hit_only():
    x, out = torch.zeros(2, 4), torch.empty(2, 4)  # T=2 tokens, h=4
    w13, w2 = torch.zeros(3, 4, 4), torch.zeros(3, 4, 2)  # E=3 experts, 2I=4 (I=2); w2 (E, h, I)
    ids = torch.tensor([[0, 1], [1, 1]])  # k=2; distinct experts {0, 1}: 2 hit
    tw = torch.zeros(2, 2)
    got = ops.cpu_fused_moe((out, x, w13, w2, None, None, tw, ids, False, "silu", "vec"), {}, None)
    # 2*T*k*(2I*h + h*I) = 2*2*2*(16 + 8)
    assert got.tensor_flops == 192 and got.experts_hit == 2
    # per expert w13 4*4*4 B + w2 4*2*4 B = 96; 2 hit
    assert got.weight_bytes == 192
    # x 2*4*4 + tw 2*2*4 + ids 2*2*8 = 80, plus the weights
    assert got.read_bytes == 80 + 192 and got.write_bytes == 2 * 4 * 4
    # pairs T*k = 4: SiLU (4) + mul (1) over I=2 -> 40; routing weight over h -> 16; sum of k rows (k-1)*h*T -> 8
    assert got.elementwise_flops == 64


def test_rotary_embedding_rotates_every_head_in_place():
    positions = torch.zeros(3, dtype=torch.int64)
    q, k = torch.zeros(3, 2 * 8), torch.zeros(3, 8)  # 2 query heads, 1 key head, head_size 8
    cos_sin = torch.zeros(10, 8)  # rot = 8
    got = ops.rotary_embedding((positions, q, k, 8, cos_sin, True), {}, None)
    # rotated: q 3*2*8 = 48, k 3*1*8 = 24 -> 72 elements, 3 FLOPs each, 4 B each read and written
    assert got.elementwise_flops == 216 and got.write_bytes == 288
    # positions 3*8 B + the cos/sin rows 3*8*4 B (a buffer: weight bytes) + the rotated elements 288 B
    assert got.read_bytes == 24 + 96 + 288 and got.weight_bytes == 96 and got.tensor_flops == 0


def test_paged_attention_reads_its_lengths_and_cache_from_the_forward_context(monkeypatch):
    metadata = SimpleNamespace(query_start_loc=torch.tensor([0, 3, 4]), seq_lens=torch.tensor([3, 5]), causal=True)
    layer, kv_cache = SimpleNamespace(num_kv_heads=1), torch.zeros(1, dtype=F32)
    monkeypatch.setattr(ops, "_attention_context", lambda name: (metadata, layer, kv_cache))
    q, out = torch.zeros(4, 2, 8), torch.zeros(4, 2, 8)  # 4 query rows, H=2, D=Dv=8
    got = ops.paged_attention((q, q, q, out, "model.layers.0.self_attn.attn"), {}, None)
    # sequence 0: 3 queries x 3 keys (a prefill), sequence 1: 1 query x 5 keys (a decode step); scores H*q*s
    scores = 2 * 3 * 3 + 2 * 1 * 5  # 28
    assert got.tensor_flops == 2 * scores * (8 + 8)  # 896
    assert got.elementwise_flops == scores * (5 + 1)  # softmax 5 + causal mask 1 per score
    # keys and values of (3 + 5) positions from the cache: 8 * Hkv 1 * (D + Dv) 16 * 4 B
    assert got.kv_cache_bytes == 512 and got.read_bytes == 4 * 2 * 8 * 4 + 512 and got.write_bytes == 256


def test_paged_attention_in_the_warm_up_forward_charges_nothing(monkeypatch):
    monkeypatch.setattr(ops, "_attention_context", lambda name: (None, None, None))
    assert ops.paged_attention((torch.zeros(1, 1, 8),) * 4 + ("x",), {}, None) == ForeignCharge()


def test_vision_sdpa_is_one_problem_per_segment():
    q = torch.zeros(1, 6, 2, 4)  # (B, S, H, D)
    out = torch.zeros(1, 6, 2, 4)
    whole = ops.vit_sdpa((q, q, q), {}, out)
    assert whole.tensor_flops == 2 * (1 * 2 * 6 * 6) * (4 + 4)  # 72 scores -> 1152
    split = ops.vit_sdpa((q, q, q, None, torch.tensor([0, 2, 6])), {}, out)
    assert split.tensor_flops == 2 * (2 * 2 * 2 + 2 * 4 * 4) * 8  # 40 scores -> 640
    assert split.elementwise_flops == 5 * 40


def test_every_vllm_op_of_the_probe_has_an_entry():
    """The ops a DeepSeek-OCR page dispatches on vLLM 0.32's CPU build (AVX2 and AVX512 paths), less the scheduler's
    integer-only bookkeeping: each must have a charge, or the audit would fail the page as uncounted."""
    names = set(ops.VLLM_OPS.names())
    seen = {
        "_C::onednn_mm",
        "_C::cpu_fused_moe",
        "_C::rotary_embedding",
        "_C::greedy_argmax",
        "_C::weight_packed_linear",
        "vllm::unified_attention_with_output",
        "vllm::unified_kv_cache_update",
        "vllm::torch_sdpa_wrapper",
    }
    assert seen <= names and ops.VLLM_OPS.reports_routing


@pytest.fixture(scope="module")
def fused_op():
    """A kernel outside aten, registered for the test: c = a @ w written into its first argument."""
    lib = torch.library.Library("dsocr_test", "DEF")
    lib.define("fused_mm(Tensor(a!) c, Tensor a, Tensor w) -> ()")
    lib.define("opaque_mm(Tensor a, Tensor w) -> Tensor")

    def fused_mm(c, a, w):
        c.copy_(a @ w)

    lib.impl("fused_mm", fused_mm, "CompositeExplicitAutograd")
    lib.impl("opaque_mm", lambda a, w: a @ w, "CompositeExplicitAutograd")
    yield torch.ops.dsocr_test
    del lib


def _charge(args, kwargs, out):
    _, a, w = args
    return ForeignCharge(tensor_flops=2 * a.shape[0] * a.shape[1] * w.shape[1], read_bytes=7, write_bytes=11)


def test_a_foreign_op_is_counted_by_its_charge_and_an_unknown_one_is_uncounted(fused_op):
    table = ForeignOps((ForeignOp("dsocr_test", "fused_mm", "linear", _charge, tensor_work=True),))
    log = AuditLog()
    charged = []
    meter = OpMeter(weights=frozenset(), foreign=table.by_packet())
    counter = global_total_counter(table.flop_formulas())
    audit = AuditMode(counter.flop_registry, lambda name, m: charged.append((name, m.vector)), log, meter)
    a, w, c = torch.ones(2, 3), torch.ones(3, 4), torch.empty(2, 4)
    with audit, counter:
        fused_op.fused_mm(c, a, w)
        fused_op.opaque_mm(a, w)
    # 2*M*K*N = 2*2*3*4 = 48, in the counter and the audit alike; the declared bytes, not the meter's reading of it
    assert counter.get_total_flops() == log.total_flops == 48
    name, vec = charged[0]
    assert name == "dsocr_test.fused_mm.default" and vec[:4] == [48, 0, 7, 11]
    assert log.ops["dsocr_test.fused_mm.default"].klass == "counted"
    assert log.uncounted() == ["dsocr_test.opaque_mm.default"]  # "mm" in its name and no entry: never trusted


def test_the_vllm_workload_follows_vllms_processor():
    # A square 1920 x 1920 page: aspect 1, so the closest grids are (2,2) and (3,3); the official rule (at most 9
    # crops) takes the larger, (3,3), since the page's area exceeds half of 9 crops of 640^2; vLLM's processor caps
    # the grid at 6 crops, leaving (2,2).
    official = VisionWorkload.from_page(1920, 1920, "gundam", impl="official")
    served = VisionWorkload.from_page(1920, 1920, "gundam", impl="vllm")
    assert (official.w_crop, official.h_crop) == (3, 3) and (served.w_crop, served.h_crop) == (2, 2)
    assert served.attn_impl == "paged" and served.lm_head_scope == "last" and official.attn_impl == "eager"


def test_the_model_folder_is_the_official_layout_with_deepseeks_special_ids(tmp_path):
    from tokenizers import Tokenizer

    from vendor_shim.vllm_engine.model_dir import write_model_dir

    folder = write_model_dir(tmp_path, "deepseek-ocr", num_layers=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["DeepseekOCRForCausalLM"]
    lang = config["language_config"]
    assert lang["num_hidden_layers"] == 2 and lang["hidden_size"] == 1280 and lang["n_routed_experts"] == 64
    assert config["projector_config"]["input_dim"] == 2048 and config["projector_config"]["n_embed"] == 1280
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.get_vocab_size() == 129280
    ids = tok.encode("<image>Hi.").ids
    assert ids[:2] == [0, 128815] and len(ids) == 2 + 3  # BOS, <image>, one token per byte of "Hi."
    assert write_model_dir(tmp_path, "deepseek-ocr", num_layers=2) == folder  # reused, not rewritten
    ocr2 = json.loads((write_model_dir(tmp_path, "deepseek-ocr-2") / "config.json").read_text())
    assert ocr2["architectures"] == ["DeepseekOCR2ForCausalLM"] and ocr2["language_config"]["num_hidden_layers"] == 12


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--backend", "hf", "--decoder-layers", "2"], "--decoder-layers applies only to --backend vllm"),
        (["--backend", "vllm", "--execution", "shapes"], "run for real only"),
        (["--backend", "vllm", "--attn-impl", "eager"], "runs paged attention only"),
        (["--backend", "vllm", "--lm-head", "all"], "use --lm-head last"),
        (["--backend", "vllm", "--mode", "base"], "runs gundam only"),
        (["--backend", "vllm", "--image-size", "1024"], "drop them"),
        (["--backend", "vllm", "--decoder-layers", "0"], "must be >= 1"),
    ],
)
def test_what_vllm_cannot_run_is_refused_before_any_work(argv, says, tmp_path, capsys, monkeypatch):
    from verify.cli import main_end2end

    monkeypatch.setenv("DSOCR_VLLM_ENV", str(tmp_path / "no-such-env"))  # nothing may be built or imported
    assert main_end2end([*argv, "--limit", "1", "--output-dir", str(tmp_path / "runs")]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_vision_alone_is_refused_for_vllm(tmp_path, capsys):
    from verify.cli import main_vision

    assert main_vision(["--backend", "vllm", "--limit", "1", "--output-dir", str(tmp_path)]) == 2
    assert "whole pages only" in capsys.readouterr().err
