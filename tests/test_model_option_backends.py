"""--model reaches the backend through the registry (`BackendSpec.families`): the hf backend runs both families;
a backend that cannot run a family refuses it in one line naming the fix (exit 2) before any model is built."""

import pytest


@pytest.mark.parametrize("entry", ["measure", "verify"])
def test_remote_code_refuses_ocr2_in_one_line(entry, capsys, tmp_path):
    argv = ["--model", "deepseek-ocr-2", "--backend", "remote-code", "--vendor-dir", str(tmp_path)]
    argv += ["--trust-remote-code"]
    if entry == "measure":
        from vendor_shim.cli import main

        rc = main([*argv, "--width", "100", "--height", "100"])
    else:
        from verify.cli import main_end2end

        rc = main_end2end(argv)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "--model deepseek-ocr-2: the remote-code backend runs deepseek-ocr only" in err
    assert "use --backend hf" in err and len(err.splitlines()) == 1


def test_hf_takes_ocr2(capsys):
    from vendor_shim.cli import main

    argv = ["--model", "deepseek-ocr-2", "--width", "700", "--height", "700", "--device", "meta", "--vision-only"]
    assert main([*argv, "--no-fvcore"]) == 0
    out = capsys.readouterr().out
    assert "qwen2_encoder/global" in out and "clip" not in out
