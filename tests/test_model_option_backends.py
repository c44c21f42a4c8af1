"""--model reaches the backend through the registry (`BackendSpec.families`): hf and remote-code run both families;
remote-code's snapshot says which family it is (config.json), and a --model that disagrees is refused in one line
naming config.json and the fix (exit 2) before any model is built."""

import pytest
from tiny_snapshots import tiny_snapshot


@pytest.mark.parametrize("entry", ["measure", "verify"])
@pytest.mark.parametrize(
    ("model", "snapshot", "fix"),
    [
        ("deepseek-ocr-2", "deepseek-ocr", "--model deepseek-ocr"),
        ("deepseek-ocr", "deepseek-ocr-2", "--model deepseek-ocr-2"),
    ],
    ids=["ocr2-on-ocr1-snapshot", "ocr1-on-ocr2-snapshot"],
)
def test_remote_code_refuses_a_family_mismatch_in_one_line(entry, model, snapshot, fix, capsys):
    argv = ["--model", model, "--backend", "remote-code", "--vendor-dir", str(tiny_snapshot(snapshot))]
    argv += ["--trust-remote-code"]
    if entry == "measure":
        from vendor_shim.cli import main

        rc = main([*argv, "--width", "800", "--height", "1000"])
    else:
        from verify.cli import main_end2end

        rc = main_end2end(argv)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "config.json" in err and f"--model {model}" in err and f"pass {fix} " in err
    assert len(err.splitlines()) == 1


def test_hf_takes_ocr2(capsys):
    from vendor_shim.cli import main

    argv = ["--model", "deepseek-ocr-2", "--width", "700", "--height", "700", "--device", "meta", "--vision-only"]
    assert main([*argv, "--no-fvcore"]) == 0
    out = capsys.readouterr().out
    assert "qwen2_encoder/global" in out and "clip" not in out
