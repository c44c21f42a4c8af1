"""The CUDA allocator's per-stage peak, with a fake allocator on CPU (no GPU here): the bookkeeping of
`vendor_shim.device_memory` and the harness path that writes it into the trace.  Every expected byte is derived
from the allocator's rounding rule (each block a multiple of 512 bytes) in the comments."""

from __future__ import annotations

import json

import pytest
import torch
from test_vendor_harness import ToyBackend, _workload

from vendor_shim import measure
from vendor_shim.device_memory import AllocatorPeaks, AllocatorProbe, cuda_allocator_probe
from vendor_shim.trace import Trace


def _block_bytes(nbytes: int) -> int:
    """What the caching allocator counts for a small request: rounded up to a multiple of kMinBlockSize (512),
    at least 512 (c10/cuda/CUDACachingAllocator.cpp ``round_size``; larger requests may count more)."""
    return 512 * max(1, -(-nbytes // 512))


class FakeAllocator:
    """Counts as the CUDA caching allocator does for small requests: every block rounded up to 512 bytes."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.syncs = 0

    def malloc(self, nbytes: int) -> None:
        self.now += _block_bytes(nbytes)
        self.peak = max(self.peak, self.now)

    def free(self, nbytes: int) -> None:
        self.now -= _block_bytes(nbytes)

    def reset(self) -> None:
        self.peak = self.now

    def sync(self) -> None:
        self.syncs += 1

    def probe(self) -> AllocatorProbe:
        return AllocatorProbe(lambda: self.now, lambda: self.peak, self.reset, self.sync, device_type="cpu")


def test_a_nested_root_raises_its_own_peak_and_leaves_its_remainder_to_the_parent():
    fake = FakeAllocator()
    peaks = AllocatorPeaks(fake.probe())
    peaks.enter()  # outer at 0
    fake.malloc(2048)  # 2,048
    peaks.enter()  # nested, entry 2,048
    fake.malloc(4096)  # 6,144: the nested stage's high-water mark
    fake.free(4096)
    fake.malloc(300)  # 512 (rounded) it leaves behind: 2,560
    assert peaks.exit() == 6144 - 2048 == 4096
    fake.malloc(1024)  # back in the outer stage: 3,584
    fake.free(1024)
    # outer: its own 2,048 + the nested remainder 512 + 1,024 = 3,584; the nested 6,144 is not the outer's
    assert peaks.exit() == 2048 + 512 + 1024 == 3584
    assert peaks.high_water() == 6144  # the run's absolute mark survives the resets


class AllocatingToy(ToyBackend):
    """The toy backend whose roots allocate on the fake allocator around their forward (hooks registered before
    the stage tracker's: its pre-hook runs first, its post-hook last)."""

    def __init__(self, fake: FakeAllocator) -> None:
        super().__init__()
        self.fake = fake

    def build(self, **kw):
        loaded = super().build(**kw)
        plan = {  # root -> (bytes allocated at entry and freed at exit, bytes left allocated at exit)
            "sam": (700, 0),  # 1,024 at its peak
            "clip": (1 << 20, 0),  # 1,048,576
            "decoder": (1000, 100),  # 1,024 at its peak, 512 left behind per call
            "lm_head": (10, 0),  # 512
        }
        for name, mod in loaded.roots.named().items():
            if name in plan:
                temp, kept = plan[name]
                mod.register_forward_pre_hook(lambda *_, n=temp: self.fake.malloc(n))
                mod.register_forward_hook(lambda *_, n=temp, k=kept: self._leave(n, k))
        return loaded

    def _leave(self, temp: int, kept: int) -> None:
        self.fake.free(temp)
        if kept:
            self.fake.malloc(kept)


def test_the_allocator_peak_reaches_every_stage_leaf_and_call_record(monkeypatch):
    fake = FakeAllocator()
    monkeypatch.setattr("vendor_shim.harness.cuda_allocator_probe", lambda device: fake.probe())
    tr = measure(_workload(decode_tokens=2), backend=AllocatingToy(fake), device="cpu", fvcore=False)
    st = tr.stages
    for branch in ("global", "crops"):
        assert st["sam"][branch]["allocator_peak_bytes"] == 1024  # 700 bytes rounded up to 2 x 512
        assert st["clip"][branch]["allocator_peak_bytes"] == 1 << 20
        assert st["projector"][branch]["allocator_peak_bytes"] == 0  # probed, allocated nothing
    assert st["prefill"]["decoder"]["allocator_peak_bytes"] == st["decode"]["decoder"]["allocator_peak_bytes"] == 1024
    assert [s["decoder"]["allocator_peak_bytes"] for s in st["decode"]["steps"]] == [1024, 1024]
    assert st["decode"]["lm_head"]["allocator_peak_bytes"] == 512
    assert all(c["allocator_peak_bytes"] is not None and c["wall_s"] >= 0 for c in tr.calls)
    # 6 vision calls + 3 decoder + 3 lm_head calls (prefill + 2 steps), synchronized at both ends
    assert len(tr.calls) == 12 and fake.syncs == 24
    assert tr.timing["stage_wall_synchronized"] is True
    assert set(tr.timing["stage_wall_s"]) == {"sam", "clip", "projector", "prefill", "decode"}
    assert "allocator_peak_bytes" not in tr.measured_metrics  # reported, never gated
    assert Trace.from_dict(json.loads(tr.to_json())).stages["clip"]["crops"]["allocator_peak_bytes"] == 1 << 20


def test_cpu_and_meta_runs_carry_no_allocator_peak():
    assert cuda_allocator_probe("cpu") is None and cuda_allocator_probe("meta") is None
    tr = measure(_workload(decode_tokens=1), backend=ToyBackend(), device="cpu", fvcore=False)
    assert tr.stages["sam"]["global"]["allocator_peak_bytes"] is None
    assert all(c["allocator_peak_bytes"] is None for c in tr.calls)
    assert tr.memory["cuda_max_allocated_bytes"] is None and tr.timing["stage_wall_synchronized"] is False


def test_validation_refuses_a_bad_allocator_peak():
    from vendor_shim import TraceValidationError

    d = measure(_workload(decode_tokens=1), backend=ToyBackend(), device="cpu", fvcore=False).to_dict()
    d["stages"]["sam"]["global"]["allocator_peak_bytes"] = -1
    with pytest.raises(TraceValidationError, match="allocator_peak_bytes"):
        Trace.from_dict(d)
    del d["stages"]["sam"]["global"]["allocator_peak_bytes"]  # absent (an older trace) is fine
    Trace.from_dict(d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_real_cuda_allocator_counts_rounded_blocks():
    probe = cuda_allocator_probe("cuda")
    peaks = AllocatorPeaks(probe)
    peaks.enter()
    x = torch.empty(700, dtype=torch.uint8, device="cuda")  # one 1,024-byte block
    del x
    assert peaks.exit() == 1024
