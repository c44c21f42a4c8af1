"""The composed model: stage totals derived by hand for a tiny Hydra override config, decode KV
growth, lm_head scope, profile differences, records/families consistency, the CLI."""

import dataclasses
import itertools
import json
import subprocess
import sys

import pytest

from analytic import VisionWorkload
from analytic.layers.common import ConfigError
from analytic.model import build_cost_model
from core.metrics import METRICS
from core.schema import ATEN_FAMILY, aten_family, leaf_paths

TINY = [
    "vision.sam.depth=2",
    "vision.sam.global_attn_indexes=[1]",  # block 0 windowed (14), block 1 global
    "vision.clip.num_layers=1",
    "decoder.num_layers=2",  # layer 0 dense SwiGLU 6848, layer 1 MoE
]


@pytest.fixture(scope="module")
def full():
    return build_cost_model()


@pytest.fixture(scope="module")
def tiny():
    return build_cost_model(TINY)


def hand_tiny_stages(prefill_len: int, official: bool, lm_all: bool, decode: int) -> dict:
    """Tensor FLOPs of the TINY config, tiny mode (512 px, one view), written out term by term."""
    # SAM at 512: grid g = 32; windowed block pads 32 -> 42: 3x3 windows of 14x14 = 196 tokens.
    g, nw, w = 32, 9, 14
    patch = 2 * (768 * g * g) * 3 * 16 * 16
    win = (
        2 * (nw * 196) * 768 * 2304  # qkv on padded windows
        + 2 * (2 * (nw * 12) * w * w * 64 * w)  # rel-pos einsums
        + 4 * nw * 12 * 196 * 196 * 64  # SDPA
        + 2 * (nw * 196) * 768 * 768  # proj
        + 2 * (g * g) * 768 * 3072 * 2  # MLP on the 1024 unpadded tokens
    )
    glob = (
        2 * (g * g) * 768 * 2304
        + 2 * (2 * 12 * g * g * 64 * g)
        + 4 * 12 * (g * g) * (g * g) * 64
        + 2 * (g * g) * 768 * 768
        + 2 * (g * g) * 768 * 3072 * 2
    )
    neck = 2 * (256 * g * g) * 768 + 2 * (256 * g * g) * 256 * 9
    net = 2 * (512 * 16 * 16) * 256 * 9 + 2 * (1024 * 8 * 8) * 512 * 9  # 32 -> 16 -> 8
    sam = patch + win + glob + neck + net
    # CLIP: 8*8 + CLS = 65 tokens, one block.
    s = 65
    clip = 2 * s * 1024 * 3072 + 4 * 16 * s * s * 64 + 2 * s * 1024 * 1024 + 2 * 2 * s * 1024 * 4096
    proj = 2 * 64 * 2048 * 1280

    def decoder(q: int, keys: int) -> int:
        rope = 2 * 2 * 64 * q if official else 0  # official: (1,64,1)@(1,1,q) bmm in each of 2 layers
        attn = 2 * (4 * 2 * q * 1280 * 1280 + 2 * 2 * 10 * q * 128 * keys)  # q,k,v,o + QK^T, AV; 2 layers
        dense = 3 * 2 * q * 1280 * 6848
        moe = 2 * q * 1280 * 64 + 2 * q * 6 * (1280 * 1792 + 896 * 1280) + 3 * 2 * q * 1280 * 1792
        return rope + attn + dense + moe

    head = 2 * 1280 * 129280
    steps = [decoder(1, prefill_len + t) for t in range(1, decode + 1)]
    return {
        ("sam", "global"): sam,
        ("clip", "global"): clip,
        ("projector", "global"): proj,
        ("prefill", "decoder"): decoder(prefill_len, prefill_len),
        ("prefill", "lm_head"): head * (prefill_len if lm_all else 1),
        ("decode", "decoder"): sum(steps),
        ("decode", "lm_head"): head * decode,
    }


@pytest.mark.parametrize("impl", ["hf", "official"])
def test_tiny_override_config_hand_derived(tiny, impl):
    w = VisionWorkload.from_page(300, 200, "tiny", prompt_tokens=3, decode_tokens=2, impl=impl)
    assert w.prefill_len == 1 + 73 + 3  # BOS + (8+1)*8+1 image tokens + prompt
    est = tiny.estimate(w)
    want = hand_tiny_stages(77, official=impl == "official", lm_all=impl == "official", decode=2)
    for (stage, part), value in want.items():
        assert est.stages[stage][part]["tensor_flops"] == value, (stage, part)
    for stage in ("sam", "clip", "projector"):
        assert all(v == 0 for v in est.stages[stage]["crops"].values())  # no crops: present, all zero
    assert est.total_tensor_flops == sum(want.values())


def test_decode_kv_growth(full):
    w = VisionWorkload.from_page(1654, 2339, "gundam", prompt_tokens=12, decode_tokens=4, impl="hf")
    steps = [s["decoder"]["tensor_flops"] for s in full.estimate(w).stages["decode"]["steps"]]
    # One more key per step: QK^T and AV each grow by 2*H*D = 2*10*128 per layer -> 12 * 5120 = 61,440
    assert [b - a for a, b in itertools.pairwise(steps)] == [61_440] * 3


def test_decode_sum_and_step_count(full):
    w = VisionWorkload.from_page(800, 1000, "base", decode_tokens=3)
    st = full.estimate(w).stages["decode"]
    assert len(st["steps"]) == 3
    for part in ("decoder", "lm_head"):
        for m in METRICS:  # work adds up over the steps; a high-water mark is the largest step's
            per_step = [s[part][m] for s in st["steps"]]
            assert st[part][m] == (max(per_step) if m == "peak_bytes" else sum(per_step))


def test_lm_head_all_vs_last(full):
    a = VisionWorkload.from_page(800, 1000, "base", prompt_tokens=10, lm_head_scope="all")
    b = VisionWorkload.from_page(800, 1000, "base", prompt_tokens=10, lm_head_scope="last")
    n = 1 + 273 + 10
    assert full.estimate(a).stages["prefill"]["lm_head"]["tensor_flops"] == 2 * n * 1280 * 129280
    assert full.estimate(b).stages["prefill"]["lm_head"]["tensor_flops"] == 2 * 1 * 1280 * 129280


def test_profiles_differ_by_rope_matmul_only(full):
    kw = dict(prompt_tokens=12, decode_tokens=2, lm_head_scope="all")
    off = full.estimate(VisionWorkload.from_page(1654, 2339, "gundam", impl="official", **kw)).stages
    hf = full.estimate(VisionWorkload.from_page(1654, 2339, "gundam", impl="hf", **kw)).stages
    n = 1 + 903 + 12
    # official recomputes RoPE in each of 12 layers: (1, 64, 1) @ (1, 1, S) = 128*S FLOPs
    assert off["prefill"]["decoder"]["tensor_flops"] - hf["prefill"]["decoder"]["tensor_flops"] == 12 * 128 * n
    assert off["decode"]["decoder"]["tensor_flops"] - hf["decode"]["decoder"]["tensor_flops"] == 2 * 12 * 128
    for stage in ("sam", "clip", "projector"):  # same vision FLOPs (CLIP q/k/v split only moves bytes)
        for branch in ("global", "crops"):
            assert off[stage][branch]["tensor_flops"] == hf[stage][branch]["tensor_flops"]


def test_crops_branch_is_its_own_batch(full):
    w = VisionWorkload.from_page(1654, 2339, "gundam")  # 2x3 grid
    one = VisionWorkload.from_page(1000, 700, "gundam")  # 640-px crops too
    st = full.estimate(w).stages
    assert (w.n_crops, w.global_view_size, w.crop_size) == (6, 1024, 640)
    # crops run at 640 (grid 40 padded to 42), the global view at 1024: different per-view costs
    assert st["sam"]["crops"]["tensor_flops"] != 6 * st["sam"]["global"]["tensor_flops"]
    per_crop = full.estimate(one).stages["sam"]["crops"]["tensor_flops"] // one.n_crops
    assert st["sam"]["crops"]["tensor_flops"] == 6 * per_crop


def test_records_and_families_add_up(full):
    w = VisionWorkload.from_page(1654, 2339, "gundam", decode_tokens=2, impl="hf", attn_impl="sdpa")
    fast = full.estimate(w)
    slow = full.estimate(w, records=True)
    assert fast.stages == slow.stages
    for stage, part in leaf_paths():
        leaf = slow.stages[stage][part]["tensor_flops"]
        assert sum(slow.families[stage][part].values()) == leaf
        assert sum(r["tensor_flops"] for r in slow.records if (r["stage"], r["part"]) == (stage, part)) == leaf
    assert {r["family"] for r in slow.records} <= {"mm", "bmm", "conv", "sdpa", "other"}
    for r in slow.records:  # the family each record names is the one the vendor side derives from the aten op
        if r["aten"] in ATEN_FAMILY:
            assert aten_family(r["aten"]) == r["family"], r
    assert slow.families["prefill"]["decoder"]["sdpa"] > 0
    prefill = [r for r in slow.records if r["stage"] == "prefill" and ".self_attn." in r["path"]]
    assert len({r["path"].split(".self_attn")[0] for r in prefill}) == 12  # every decoder layer, not a scaled one


def test_causal_field(full):
    w = VisionWorkload.from_page(800, 1000, "base", prompt_tokens=0, impl="hf")
    leaf = full.estimate(w).stages["prefill"]["decoder"]
    n = 274
    full_attn = 12 * 2 * (2 * 10 * n * 128 * n)
    causal_attn = 12 * 2 * (2 * 10 * (n * (n + 1) // 2) * 128)
    assert leaf["tensor_flops"] - leaf["causal_tensor_flops"] == full_attn - causal_attn


def test_bad_overrides():
    with pytest.raises(ConfigError, match="global_attn_indexes"):
        build_cost_model(["vision.sam.depth=2"])
    with pytest.raises(ConfigError, match="projector"):
        build_cost_model(["projector.n_embed=1000"])
    with pytest.raises(ConfigError):
        build_cost_model(["no_such_key=1"])


def test_projector_group_override():
    m = build_cost_model(["projector=mlp_gelu", "projector.depth=3"])
    w = VisionWorkload.from_page(800, 1000, "base")
    # 256 rows: Linear(2048, 1280) + 2 x Linear(1280, 1280)
    assert m.estimate(w).stages["projector"]["global"]["tensor_flops"] == 2 * 256 * (2048 * 1280 + 2 * 1280 * 1280)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "analytic", *args], capture_output=True, text=True, timeout=60)


def test_cli_json():
    r = run_cli(
        "--mode",
        "gundam",
        "--width",
        "1654",
        "--height",
        "2339",
        "--prompt-tokens",
        "12",
        "--decode-tokens",
        "2",
        "--lm-head",
        "all",
        "--impl",
        "official",
        "--json",
        "--override",
        "decoder.num_layers=2",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    w = doc["workload"]
    assert (w["w_crop"], w["h_crop"], w["n_crops"], w["n_image_tokens"], w["prefill_len"]) == (2, 3, 6, 903, 916)
    assert set(doc["stages"]) == {"sam", "clip", "projector", "prefill", "decode"}
    assert len(doc["stages"]["decode"]["steps"]) == 2
    assert doc["model"]["decoder"]["num_layers"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ("--mode", "huge", "--width", "10", "--height", "10"),
        ("--mode", "base", "--width", "0", "--height", "10"),
        ("--mode", "base", "--width", "10", "--height", "-3"),
        ("--mode", "gundam", "--image-size", "1024", "--width", "10", "--height", "10"),
        ("--mode", "base", "--width", "10", "--height", "10", "--override", "decoder.num_heads=7"),
        ("--mode", "base", "--width", "10"),
        ("--mode", "base", "--width", "10", "--height", "10", "--lm-head", "some"),
    ],
)
def test_cli_bad_input_exit_2(args):
    r = run_cli(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_build_inside_a_callers_hydra_app(tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        outer = GlobalHydra.instance().hydra
        assert build_cost_model(["decoder.num_layers=1"]).decoder.num_layers == 1
        assert GlobalHydra.instance().hydra is outer  # the caller's Hydra state is left as it was


def test_a_pages_decode_stage_is_walked_once_and_handed_out_as_copies(full):
    """The decode stage is memoised by prefill length, decode length and what a step is keyed by: a second estimate
    of the page on another prefill routing (the verifier's second estimate) gives the same decode stage, its
    per-part sums equal the steps' sums by hand (sum over steps; peak: the largest), and a caller writing its copy
    changes nothing the next estimate gives."""
    w = VisionWorkload.from_page(1654, 2339, "gundam", decode_tokens=5)
    first = full.estimate(w).stages["decode"]
    routed = full.estimate(dataclasses.replace(w, prefill_experts_hit=(60,) * 11)).stages["decode"]
    assert routed == first
    steps = first["steps"]
    assert first["decoder"]["tensor_flops"] == sum(s["decoder"]["tensor_flops"] for s in steps)
    assert first["decoder"]["peak_bytes"] == max(s["decoder"]["peak_bytes"] for s in steps)
    first["decoder"]["tensor_flops"] = -1
    first["steps"].clear()
    again = full.estimate(w).stages["decode"]
    assert again == routed and len(again["steps"]) == 5
