"""CLI exit codes and JSON output of `python -m vendor_shim` (full-size vision on meta: shapes only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vendor_shim.cli import build_parser, main
from vendor_shim.trace import Trace


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vendor_shim", *args], capture_output=True, text=True, timeout=300)


def test_cli_vision_only_meta_json_validates():
    r = _run(
        "--backend",
        "hf",
        "--mode",
        "gundam",
        "--width",
        "1654",
        "--height",
        "2339",
        "--prompt-tokens",
        "12",
        "--device",
        "meta",
        "--vision-only",
        "--no-fvcore",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    tr = Trace.from_dict(json.loads(r.stdout))
    assert tr.complete and tr.received["n_crops"] == 6 and tr.vision_only


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--mode", "bogus", "--width", "10", "--height", "10"], "invalid choice: 'bogus'"),
        (["--width", "0", "--height", "10"], "not positive"),
        (["--width", "1654", "--height", "2339", "--device", "meta"], "--vision-only"),
        (["--mode", "gundam"], "page size missing"),
        (["--backend", "nope"], "invalid choice"),
        (["--crop-mode", "maybe", "--width", "10", "--height", "10"], "'maybe' is not one of true/false"),
        (["--crop-mode", "", "--width", "10", "--height", "10"], "is not one of true/false"),
        # gundam A4: 1 + (273 + 630) image + 12 prompt + 100000 decode > 8192 positions
        (["--width", "1654", "--height", "2339", "--decode-tokens", "100000"], "past the decoder's 8192"),
        (["--width", "1654", "--height", "2339", "--prompt-tokens", str(10**12)], "past the decoder's 8192"),
        (["--vendor-dir", "/tmp", "--width", "10", "--height", "10"], "--vendor-dir applies only to --backend"),
        (["--trust-remote-code", "--width", "10", "--height", "10"], "--trust-remote-code applies only to --backend"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cli_cuda_without_gpu_exits_2(capsys):
    assert main(["--width", "1654", "--height", "2339", "--device", "cuda", "--vision-only"]) == 2
    assert "no GPU" in capsys.readouterr().err


def test_cli_writes_trace_file(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(
        [
            "--mode",
            "tiny",
            "--width",
            "600",
            "--height",
            "800",
            "--device",
            "meta",
            "--vision-only",
            "--no-fvcore",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    trace = json.loads(out.read_text())
    assert trace["schema_version"] == 2
    # tiny: one 512 view; the projector is Linear(2048, 1280) over nq^2 = 8 x 8 = 64 rows, float32:
    # reads 64*2048*4 = 524,288 + weights (2048*1280 + 1280)*4 = 10,490,880; writes 64*1280*4 = 327,680
    proj = trace["stages"]["projector"]["global"]
    assert proj["activation_bytes"] == proj["peak_bytes"] == 64 * 1280 * 4
    assert proj["weight_bytes"] == (2048 * 1280 + 1280) * 4
    assert proj["io_bytes"] == 64 * 2048 * 4 + (2048 * 1280 + 1280) * 4 + 64 * 1280 * 4
    printed = capsys.readouterr().out
    assert "vendor work" in printed and "vendor bytes" in printed and "activation" in printed


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("on", True),
        ("ON", True),
        ("yes", True),
        ("1", True),
        ("True", True),
        ("off", False),
        ("No", False),
        ("0", False),
        ("false", False),
    ],
)
def test_crop_mode_words(word, value):
    assert build_parser().parse_args(["--crop-mode", word]).crop_mode is value


def test_unwritable_out_is_exit_2_without_traceback(tmp_path, capsys):
    out = tmp_path / "missing-folder" / "t.json"
    argv = ["--width", "500", "--height", "400", "--vision-only", "--device", "meta", "--no-fvcore", "--out", out]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write --out" in err and len(err.splitlines()) == 1
