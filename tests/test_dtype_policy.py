"""``--dtype auto``: one policy, one default and one list of choices across every CLI."""

from __future__ import annotations

import pytest

from analytic import cli as analytic_cli
from core.dtype_policy import DTYPE_CHOICES, capped_by_environment, choose_dtype, cpuinfo_native_bf16
from vendor_shim import cli as measure_cli
from vendor_shim import env as shim_env
from verify import cli as verify_cli


@pytest.mark.parametrize(
    ("requested", "device", "native", "want"),
    [
        ("auto", "cpu", True, "bfloat16"),
        ("auto", "cpu", False, "float32"),  # AVX2-only: bf16 matmul is ~250x slower there
        ("auto", "cuda", True, "bfloat16"),
        ("auto", "meta", False, "float32"),  # meta resolves like the host CPU
        ("float16", "cpu", True, "float16"),  # an explicit --dtype always wins
        ("bfloat16", "cpu", False, "bfloat16"),
    ],
)
def test_choose_dtype(requested, device, native, want):
    choice = choose_dtype(requested, device=device, native_bf16=native, probe="probe text")
    assert choice.dtype == want and choice.requested == requested
    assert ("probe text" in choice.reason) == (requested == "auto")


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="auto, float32"):
        choose_dtype("int8", device="cpu", native_bf16=True, probe="")


def test_cpuinfo_probe_reads_flags_and_honours_the_kernel_caps(tmp_path, monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpuinfo_native_bf16(str(with_bf16)) == (True, "cpu flags: avx512_bf16")
    assert cpuinfo_native_bf16(str(avx2))[0] is False
    assert cpuinfo_native_bf16(str(tmp_path / "missing"))[0] is False
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert capped_by_environment() == "ATEN_CPU_CAPABILITY=avx2"
    assert cpuinfo_native_bf16(str(with_bf16)) == (False, "ATEN_CPU_CAPABILITY=avx2")


def test_vendor_probe_says_why(monkeypatch):
    fake = {"capability": "AVX2", "avx512_bf16": False, "amx": False, "onednn_bf16": False}
    monkeypatch.setattr(shim_env, "cpu_info", lambda: {**fake, "native_bf16": False, "capped_by": None})
    choice = shim_env.resolve_dtype("auto", "cpu")
    assert choice.dtype == "float32"
    assert "AVX2" in choice.reason and "no avx512_bf16/amx" in choice.reason
    monkeypatch.setattr(
        shim_env,
        "cpu_info",
        lambda: {
            **fake,
            "capability": "AVX512",
            "avx512_bf16": True,
            "onednn_bf16": True,
            "native_bf16": True,
            "capped_by": None,
        },
    )
    assert shim_env.resolve_dtype("auto", "cpu").dtype == "bfloat16"
    assert shim_env.resolve_dtype("float32", "cpu").reason == "asked for with --dtype"


def test_cpu_info_names_what_decides_speed():
    info = shim_env.cpu_info()
    assert {"model", "capability", "native_bf16", "cores", "torch_threads"} <= set(info)
    assert info["cores"] >= 1


def _dtype_action(parser):
    return next(a for a in parser._actions if a.dest == "dtype")


def test_every_cli_has_the_same_dtype_default_and_choices():
    parsers = [
        analytic_cli.build_parser(),
        measure_cli.build_parser(),
        verify_cli.build_parser("run_verify_end2end", vision_only=False),
        verify_cli.build_parser("run_verify_end2end_vision", vision_only=True),
    ]
    for p in parsers:
        action = _dtype_action(p)
        assert action.default == "auto"
        assert tuple(action.choices) == DTYPE_CHOICES


def _fake_cuda(monkeypatch, bf16: bool, name: str = "NVIDIA H200") -> None:
    """torch.cuda as a GPU machine answers (this host has none)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)


def test_cuda_auto_dtype_is_bfloat16_where_the_gpu_has_it(monkeypatch):
    _fake_cuda(monkeypatch, bf16=True)
    choice = shim_env.resolve_dtype("auto", "cuda")
    assert choice.dtype == "bfloat16"
    assert "NVIDIA H200" in choice.reason and "is_bf16_supported() is True" in choice.reason
    _fake_cuda(monkeypatch, bf16=False, name="Tesla V100")  # pre-Ampere: no bf16 arithmetic
    assert shim_env.resolve_dtype("auto", "cuda").dtype == "float32"
    assert shim_env.resolve_dtype("float16", "cuda").dtype == "float16"  # an explicit --dtype wins


def test_execution_auto_is_real_on_cuda_and_shapes_elsewhere():
    from vendor_shim.backends.base import resolve_execution

    assert resolve_execution("auto", "cuda") == "real"
    assert resolve_execution("auto", "cpu") == resolve_execution("auto", "meta") == "shapes"
    assert resolve_execution("shapes", "cuda") == "shapes" and resolve_execution("real", "cpu") == "real"


def test_verify_cli_on_cuda_defaults_to_bfloat16_and_real_arithmetic(monkeypatch):
    _fake_cuda(monkeypatch, bf16=True)
    args = verify_cli.build_parser("run_verify_end2end", vision_only=False).parse_args(["--device", "cuda"])
    cfg = verify_cli.config_from_args(args, "run_verify_end2end", vision_only=False)
    assert (cfg.dtype, cfg.execution, cfg.vision_device) == ("bfloat16", "real", None)  # vision on cuda too
