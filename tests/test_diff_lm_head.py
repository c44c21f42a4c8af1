"""`dsocr-diff` on two real traces that differ in one known way: lm_head over every prefill position vs the last.

Same workload through the hf backend (transformers' UnlimitedOcr classes) at reduced depth (2 decoder layers),
float32 on CPU with the vision stack on meta. The expected difference is derived by hand:

- tiny mode (512, no crops): nq = ceil((512 // 16) / 4) = 8, image tokens = (nq + 1) * nq + 1 = 73 (docs/conventions.md)
- prefill_len S = 1 (BOS) + 73 + 5 prompt tokens = 79;
- lm_head is Linear(1280, 129280) without bias: "all" runs it on S rows, "last" on 1, so
  all - last = 2 * (S - 1) * 1280 * 129280 FLOPs, in stage prefill, part lm_head, op aten.mm, and nowhere else;
- its bytes (float32, 4 per element): the mm reads S rows of 1280 and writes S rows of 129280 instead of 1
  (the last-row slice is a view), so io_bytes fall by (S - 1) * (1280 + 129280) * 4 and activation_bytes by
  (S - 1) * 129280 * 4; the logits are the only tensor the lm_head allocates, so peak_bytes fall by the same;
  the weights read (1280 x 129280) do not change.
"""

from __future__ import annotations

import json
import math

import pytest

from core.workload import VisionWorkload
from drift.cli import main

pytest.importorskip("transformers.models.unlimited_ocr")

HIDDEN, VOCAB, PROMPT = 1280, 129280, 5
NQ = math.ceil((512 // 16) / 4)
IMAGE_TOKENS = (NQ + 1) * NQ + 1  # 73
S = 1 + IMAGE_TOKENS + PROMPT  # BOS + image tokens + prompt tokens = 79
LM_HEAD_GAP = 2 * (S - 1) * HIDDEN * VOCAB
LOGITS_GAP = (S - 1) * VOCAB * 4  # 40,335,360
IO_GAP = (S - 1) * (HIDDEN + VOCAB) * 4  # 40,734,720


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    from vendor_shim import ModelCache, measure
    from vendor_shim.backends.hf import HfBackend

    backend, models = HfBackend(num_text_layers=2), ModelCache()
    out = tmp_path_factory.mktemp("lm_head")
    paths = {}
    for scope in ("all", "last"):
        w = VisionWorkload.from_page(
            500, 700, "tiny", prompt_tokens=PROMPT, decode_tokens=1, impl="hf", lm_head_scope=scope, dtype="float32"
        )
        assert w.prefill_len == S == 79
        tr = measure(w, backend=backend, device="cpu", model_cache=models, fvcore=False, vision_device="meta")
        assert tr.complete, tr.coverage["uncounted_ops"]
        paths[scope] = out / f"{scope}.json"
        paths[scope].write_text(tr.to_json())
    return paths


def test_diff_names_exactly_the_stage_the_amount_and_the_op(traces, capsys):
    assert main([str(traces["all"]), str(traces["last"]), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "different" and doc["exit_code"] == 1
    assert doc["environment_changes"] == []  # same libraries, device, dtype: only the workload knob differs
    assert doc["workload_changes"] == [{"pair": "trace", "field": "lm_head_scope", "a": "all", "b": "last"}]
    changed = [(r["stage"], r["part"], r["metric"], r["delta"], r["gated"]) for r in doc["metrics"] if r["changed"]]
    assert changed == [
        ("prefill", "lm_head", "tensor_flops", -LM_HEAD_GAP, True),
        ("prefill", "lm_head", "io_bytes", -IO_GAP, True),
        ("prefill", "lm_head", "activation_bytes", -LOGITS_GAP, True),
        ("prefill", "lm_head", "peak_bytes", -LOGITS_GAP, True),
    ]
    assert doc["leaf_changes"] == [
        {"stage": "prefill", "part": "lm_head", "metric": m, "gated": True, "pages": 1, "delta": delta}
        for m, delta in (
            ("tensor_flops", -LM_HEAD_GAP),
            ("io_bytes", -IO_GAP),
            ("activation_bytes", -LOGITS_GAP),
            ("peak_bytes", -LOGITS_GAP),
        )
    ]
    # generate()'s own bookkeeping outside the model's forward (slicing the logits) is listed apart, never staged
    [op] = [o for o in doc["ops"] if o["stage"] != "unattributed"]
    assert (op["stage"], op["part"], op["op"], op["status"]) == ("prefill", "lm_head", "aten.mm.default", "changed")
    assert (op["delta_flops"], op["calls_a"], op["calls_b"]) == (-LM_HEAD_GAP, 1, 1)
    assert op["deltas"] == {"activation_bytes": -LOGITS_GAP, "io_bytes": -IO_GAP}
    assert op["flops_a"] - op["flops_b"] == LM_HEAD_GAP and op["flops_b"] == 2 * 1 * HIDDEN * VOCAB
    assert op["shapes_a"] == [{"module": "lm_head", "input_shapes": [["arg0", [1, S, HIDDEN]]], "calls": 1}]
    assert op["shapes_b"] == [{"module": "lm_head", "input_shapes": [["arg0", [1, 1, HIDDEN]]], "calls": 1}]
    assert doc["headline"] == (
        f"lm_head_scope all -> last: stage prefill/lm_head changed by {-LM_HEAD_GAP:+,} FLOPs "
        f"(tensor_flops; ops: aten.mm.default {-LM_HEAD_GAP:+,}); "
        f"stage prefill/lm_head changed by {-IO_GAP:+,} bytes (io_bytes; ops: aten.mm.default {-IO_GAP:+,}); "
        f"stage prefill/lm_head changed by {-LOGITS_GAP:+,} bytes (activation_bytes; ops: aten.mm.default "
        f"{-LOGITS_GAP:+,}); stage prefill/lm_head changed by {-LOGITS_GAP:+,} bytes (peak_bytes)"
    )


def test_reverse_direction_and_same_trace(traces, capsys):
    assert main([str(traces["last"]), str(traces["all"]), "--quiet"]) == 1
    assert f"changed by +{LM_HEAD_GAP:,} FLOPs" in capsys.readouterr().out
    assert main([str(traces["last"]), str(traces["last"]), "--quiet"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(": no change")
