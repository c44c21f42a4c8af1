"""The counting harness on a toy backend whose every FLOP is derived by hand below.

The toy implements the backend contract (vendor_shim.backends.base) with tiny modules so
the harness, the stage attribution, the audit and the trace schema are tested without
transformers.  Expected numbers are computed from shapes in the comments, never measured.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.workload import VisionWorkload
from vendor_shim import ModelCache, Trace, TraceValidationError, measure
from vendor_shim.backends.base import (
    GenerationResult,
    LoadedModel,
    PreparedInputs,
    ReceivedInputs,
    StageRoots,
    VendorBackend,
    device_refusal,
)
from vendor_shim.errors import VendorInputError, VendorRunError, WorkloadMismatchError
from vendor_shim.harness import IncompleteCountWarning, run_counted

C, P, H, V = 8, 16, 16, 32  # toy SAM channels, projector width, decoder hidden, vocab
PATCH = 64  # toy SAM: one conv with kernel = stride = 64


def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


_LIB = torch.library.Library("dsocrtest", "FRAGMENT")
_LIB.define("mystery(Tensor x) -> Tensor")
_LIB.impl("mystery", _mystery, "CompositeExplicitAutograd")


class ToySam(nn.Module):
    def __init__(self, use_mystery: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, kernel_size=PATCH, stride=PATCH, bias=False)
        self.use_mystery = use_mystery

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.ops.dsocrtest.mystery(y) if self.use_mystery else y


class ToyClip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.lin(x.flatten(2).transpose(1, 2))  # (B, T, C)
        q = t.unsqueeze(1)  # (B, 1 head, T, C)
        return F.scaled_dot_product_attention(q, q, q).squeeze(1)


class ToyDecoder(nn.Module):
    """One Linear plus a grouped matmul over two 'experts' (tokens split 1 : rest)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(H, H, bias=False)
        self.experts = nn.Parameter(torch.zeros(2, H, H))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)[0]  # (S, H)
        s = h.shape[0]
        offs = torch.tensor([min(1, s), s], dtype=torch.int32, device=h.device)
        return torch._grouped_mm(h, self.experts, offs=offs).unsqueeze(0)


class ToyTop(nn.Module):
    def __init__(self, decoder: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.lm_head = lm_head

    def forward(self, x: torch.Tensor, keep_last: bool) -> torch.Tensor:
        h = self.decoder(x)
        return self.lm_head(h[:, -1:] if keep_last else h)


class ToyBackend(VendorBackend):
    name = "toy"

    def __init__(self, use_mystery: bool = False, lie_about_tokens: bool = False, outside_flops: bool = False):
        self.use_mystery = use_mystery
        self.lie_about_tokens = lie_about_tokens
        self.outside_flops = outside_flops

    def build(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> LoadedModel:
        sam, clip, proj = ToySam(self.use_mystery), ToyClip(), nn.Linear(C, P)
        dec, head = ToyDecoder(), nn.Linear(H, V, bias=False)
        top = ToyTop(dec, head)
        model = nn.ModuleDict({"sam": sam, "clip": clip, "projector": proj, "top": top}).to(device)
        roots = StageRoots({"sam": sam, "clip": clip, "projector": proj}, decoder=dec, lm_head=head, top=top)
        return LoadedModel("toy", device, dtype, attn_impl, vision_only, model, roots)

    def prepare_inputs(self, loaded: LoadedModel, w: VisionWorkload) -> PreparedInputs:
        g = torch.zeros(1, 3, w.global_view_size, w.global_view_size, device=loaded.device)
        crops = torch.zeros(w.n_crops, 3, w.crop_size, w.crop_size, device=loaded.device) if w.has_crops else None
        n_img = w.n_image_tokens + (1 if self.lie_about_tokens else 0)
        received = ReceivedInputs(
            global_view_size=g.shape[-1],
            crop_size=crops.shape[-1] if crops is not None else 0,
            w_crop=w.w_crop,
            h_crop=w.h_crop,
            n_crops=crops.shape[0] if crops is not None else 0,
            n_image_tokens=n_img,
            prompt_tokens=w.prompt_tokens,
            prefill_len=1 + n_img + w.prompt_tokens,
        )
        return PreparedInputs(received, {"global": g, "crops": crops, "prefill_len": received.prefill_len})

    def run_vision(self, loaded: LoadedModel, inputs: PreparedInputs) -> None:
        m = loaded.model
        for x in (inputs.payload["crops"], inputs.payload["global"]):  # crops first, like the official code
            if x is not None:
                m["projector"](m["clip"](m["sam"](x)))

    def run_generation(self, loaded, inputs, decode_tokens, lm_head_scope) -> GenerationResult:
        self.run_vision(loaded, inputs)  # toy: vision outside the top module is fine for a test
        top = loaded.model["top"]
        s = inputs.payload["prefill_len"]
        top(torch.zeros(1, s, H, device=loaded.device), keep_last=lm_head_scope == "last")
        for _ in range(decode_tokens):
            top(torch.zeros(1, 1, H, device=loaded.device), keep_last=True)
        if self.outside_flops:
            torch.zeros(2, 3) @ torch.zeros(3, 4)  # 2*2*3*4 = 48 FLOPs outside every root
        return GenerationResult(lm_head_scope, decode_tokens + 1, "toy loop")

    def environment(self) -> dict:
        return {"code_hashes": {}}


def _workload(decode_tokens: int = 3, lm_head_scope: str = "last") -> VisionWorkload:
    # gundam 1654x2339: global 1024 + a 2x3 grid of 640 crops; 903 image tokens; 12 prompt tokens.
    return VisionWorkload.from_page(
        1654, 2339, "gundam", prompt_tokens=12, decode_tokens=decode_tokens, impl="hf", lm_head_scope=lm_head_scope
    )


def _expected_vision(batch: int, side: int) -> dict[str, int]:
    g = side // PATCH  # SAM output grid; T = g*g tokens
    t = g * g
    return {
        "sam": 2 * batch * C * t * (3 * PATCH * PATCH),  # conv: 2 * out elements * (Cin * k * k)
        "clip": 2 * batch * t * C * C + 4 * batch * 1 * t * t * C,  # Linear + SDPA 4*B*H*Sq*Sk*D
        "projector": 2 * batch * t * C * P,  # addmm
    }


def test_toy_full_run_stage_values_and_sum_equal_total():
    w = _workload(decode_tokens=3)
    tr = measure(w, backend=ToyBackend(), device="cpu", fvcore=False)
    assert tr.complete and tr.coverage["uncounted_ops"] == []
    glob, crops = _expected_vision(1, 1024), _expected_vision(6, 640)
    for stage in ("sam", "clip", "projector"):
        assert tr.stages[stage]["global"]["tensor_flops"] == glob[stage]
        assert tr.stages[stage]["crops"]["tensor_flops"] == crops[stage]
    s = w.prefill_len  # 1 + 903 + 12 = 916
    assert s == 916
    # decoder: Linear 2*S*H*H + grouped mm over all S tokens 2*S*H*H
    assert tr.stages["prefill"]["decoder"]["tensor_flops"] == 2 * s * H * H + 2 * s * H * H
    assert tr.stages["prefill"]["lm_head"]["tensor_flops"] == 2 * 1 * H * V  # scope "last"
    assert tr.stages["decode"]["decoder"]["tensor_flops"] == 3 * (2 * H * H + 2 * H * H)
    assert tr.stages["decode"]["lm_head"]["tensor_flops"] == 3 * 2 * H * V
    assert [st["lm_head"]["tensor_flops"] for st in tr.stages["decode"]["steps"]] == [2 * H * V] * 3
    assert tr.totals["stage_sum"] == tr.totals["counter_total"] == tr.totals["audit_total"]
    assert tr.received["decode_forwards"] == 3 and tr.received["lm_head_scope"] == "last"
    fam = tr.op_breakdown["prefill"]["decoder"]["aten._grouped_mm.default"]["family"]
    assert fam == "mm"
    assert tr.op_breakdown["clip"]["crops"]["aten._scaled_dot_product_flash_attention_for_cpu.default"]["flops"] == (
        4 * 6 * 1 * 100 * 100 * C
    )


def test_toy_lm_head_scope_all_projects_every_prefill_position():
    tr = measure(_workload(decode_tokens=1, lm_head_scope="all"), backend=ToyBackend(), fvcore=False)
    assert tr.stages["prefill"]["lm_head"]["tensor_flops"] == 2 * 916 * H * V


def test_toy_vision_only_cpu_equals_meta():
    w = _workload(decode_tokens=0)
    cpu = measure(w, backend=ToyBackend(), device="cpu", vision_only=True, fvcore=False)
    meta = measure(w, backend=ToyBackend(), device="meta", vision_only=True, fvcore=False)
    for s in ("sam", "clip", "projector"):
        for b in ("global", "crops"):
            assert cpu.stages[s][b]["tensor_flops"] == meta.stages[s][b]["tensor_flops"] > 0


def test_toy_uncounted_custom_op_marks_trace_incomplete():
    be = ToyBackend(use_mystery=True)
    w = _workload(decode_tokens=0)
    loaded = be.build(device="cpu", dtype="float32", attn_impl="eager", vision_only=True)
    with pytest.warns(IncompleteCountWarning, match="dsocrtest.mystery"):
        tr = run_counted(be, loaded, w, vision_only=True, fvcore=False)
    assert tr.complete is False
    assert tr.coverage["uncounted_ops"] == ["dsocrtest.mystery.default"]
    assert tr.incomplete_reasons


def test_toy_token_mismatch_fails_loudly():
    with pytest.raises(WorkloadMismatchError, match="n_image_tokens"):
        measure(_workload(), backend=ToyBackend(lie_about_tokens=True), fvcore=False)


def test_toy_flops_outside_every_root_fail_loudly():
    with pytest.raises(VendorRunError, match="outside every stage root"):
        measure(_workload(decode_tokens=1), backend=ToyBackend(outside_flops=True), fvcore=False)


def test_device_refusals_are_one_rule_for_backends_and_measure():
    assert "unknown" in device_refusal("tpu", True) and "--vision-only" in device_refusal("meta", False)
    assert device_refusal("meta", True) is None and device_refusal("cpu", False) is None
    for device, vision_only in (("tpu", True), ("meta", False), ("meta", True), ("cpu", False)):
        assert ToyBackend().supports_device(device, vision_only) == device_refusal(device, vision_only)
    with pytest.raises(VendorInputError, match="--vision-only"):
        measure(_workload(1), backend=ToyBackend(), device="meta", fvcore=False)


def test_model_cache_reuses_built_model():
    cache = ModelCache()
    be = ToyBackend()
    a = measure(_workload(1), backend=be, model_cache=cache, fvcore=False)
    b = measure(_workload(2), backend=be, model_cache=cache, fvcore=False)
    assert not a.timing["model_reused"] and b.timing["model_reused"] and len(cache) == 1


def test_trace_json_round_trip_and_validation_failures():
    tr = measure(_workload(2), backend=ToyBackend(), fvcore=False)
    again = Trace.from_dict(json.loads(tr.to_json()))
    assert again.to_dict() == tr.to_dict()
    d = tr.to_dict()
    for breaker, msg in (
        (lambda x: x.pop("coverage"), "missing field 'coverage'"),
        (lambda x: x.update(schema_version=99), "schema_version"),
        (lambda x: x["stages"]["sam"]["global"].update(tensor_flops=1), "stage_sum"),
        (lambda x: x["coverage"].update(uncounted_ops=["aten.foo.default"]), "marked complete"),
        (lambda x: x["stages"]["decode"]["steps"].pop(), "decode.steps"),
        (lambda x: x["stages"]["clip"].pop("crops"), "stages.clip.crops"),
        # a decode step's leaf: each bad value is named with its step (the checks run metric by metric)
        (
            lambda x: x["stages"]["decode"]["steps"][1]["decoder"].update(io_bytes=True),
            r"steps\[1\]\.decoder\.io_bytes",
        ),
        (lambda x: x["stages"]["decode"]["steps"][0]["lm_head"].update(weight_bytes=-1), r"steps\[0\]\.lm_head"),
        (lambda x: x["stages"]["decode"]["steps"][1]["lm_head"].pop("peak_bytes"), r"steps\[1\]\.lm_head lacks"),
        (lambda x: x["stages"]["decode"]["steps"][0].update(decoder=[]), r"steps\[0\]\.decoder is not an object"),
        (lambda x: x["stages"]["decode"]["steps"][1]["decoder"].update(allocator_peak_bytes=1.5), "allocator_peak"),
        (lambda x: x["stages"]["decode"]["steps"][1]["decoder"].update(io_bytes=10**15), "decode steps give"),
    ):
        bad = Trace.from_dict(json.loads(tr.to_json())).to_dict()
        breaker(bad)
        with pytest.raises(TraceValidationError, match=msg):
            Trace.from_dict(bad)
    assert d["schema_version"] == 2


def test_warning_is_not_silenced_by_default():
    be = ToyBackend(use_mystery=True)
    loaded = be.build(device="cpu", dtype="float32", attn_impl="eager", vision_only=True)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        run_counted(be, loaded, _workload(0), vision_only=True, fvcore=False)
    assert any(issubclass(r.category, IncompleteCountWarning) for r in rec)
