"""The measure and verify CLIs take --model (the shared workload option) but refuse DeepSeek-OCR 2 in one
line until its backends exist (issue 13); the refusal comes before any model is built."""

import pytest


@pytest.mark.parametrize("entry", ["measure", "verify"])
def test_no_backend_for_ocr2_yet(entry, capsys):
    if entry == "measure":
        from vendor_shim.cli import main

        rc = main(["--model", "deepseek-ocr-2", "--width", "100", "--height", "100"])
    else:
        from verify.cli import main_end2end

        rc = main_end2end(["--model", "deepseek-ocr-2"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "no backend for OCR-2 yet" in err and "dsocr-analytic --model deepseek-ocr-2" in err
    assert len(err.splitlines()) == 1
