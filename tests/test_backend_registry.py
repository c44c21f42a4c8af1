"""Adding a backend is one module plus one registry line: a stub registers here and runs the whole product."""

from __future__ import annotations

import json

import pytest

from vendor_shim.backends import REGISTRY, BackendSpec, get_backend, impl_of
from vendor_shim.backends.base import BackendBase, OutOfProcessBackend, VendorBackend
from vendor_shim.backends.hf import HfBackend
from vendor_shim.errors import VendorInputError
from verify.cli import main_end2end


class StubBackend(HfBackend):
    """A 'new' implementation: the hf classes at reduced depth (2 decoder layers) under their own name."""

    name = "stub"

    def __init__(self) -> None:
        super().__init__(num_text_layers=2)


def make_stub(
    *, vendor_dir: str | None = None, trust_remote_code: bool = False, model: str = "deepseek-ocr"
) -> StubBackend:
    return StubBackend()


@pytest.fixture
def stub_registered():
    REGISTRY.register(BackendSpec("stub", make_stub, impl="hf", summary="test stub", splits_vision=True))
    yield
    REGISTRY.unregister("stub")


def test_a_registered_stub_runs_through_run_verify_end2end(stub_registered, tmp_path):
    argv = ["--backend", "stub", "--limit", "1", "--decode-tokens", "2", "--quiet", "--no-cache"]
    argv += ["--override", "decoder.num_layers=2", "--output-dir", str(tmp_path)]
    assert main_end2end(argv) == 0
    (report,) = tmp_path.glob("*/report.json")
    doc = json.loads(report.read_text())
    assert doc["config"]["backend"] == "stub" and doc["verdict"] == "PASS"
    assert doc["pages"][0]["trace"]["backend"] == "stub"


def test_registry_is_the_one_place_for_names_profiles_and_capabilities():
    assert REGISTRY.names() == ("hf", "remote-code", "vllm") and REGISTRY.default == "hf"
    assert impl_of("hf") == "hf" and impl_of("remote-code") == "official" and impl_of("vllm") == "vllm"
    assert REGISTRY.spec("hf").splits_vision and not REGISTRY.spec("remote-code").splits_vision
    assert REGISTRY.spec("remote-code").needs_vendor_dir
    assert REGISTRY.spec("vllm").reduced_depth and REGISTRY.spec("vllm").real_only
    with pytest.raises(VendorInputError, match="unknown backend 'tgi'"):
        get_backend("tgi")
    with pytest.raises(VendorInputError, match="--decoder-layers applies only to --backend vllm"):
        get_backend("hf", decoder_layers=2)
    with pytest.raises(ValueError, match="twice"):
        REGISTRY.register(REGISTRY.spec("hf"))


def test_every_backend_class_implements_the_protocol():
    assert issubclass(VendorBackend, BackendBase) and issubclass(OutOfProcessBackend, BackendBase)
    from vendor_shim.backends.remote_code import RemoteCodeBackend
    from vendor_shim.backends.vllm import VllmBackend

    for cls in (HfBackend, RemoteCodeBackend, VllmBackend):
        assert not getattr(cls, "__abstractmethods__", None), cls
    hf = get_backend("hf")
    assert hf.signature()["backend"] == "hf" and hf.signature()["code_hashes"]
    assert set(hf.cache_versions()) >= {"torch", "transformers"}
