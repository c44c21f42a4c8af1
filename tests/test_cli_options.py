"""One workload option group: every CLI offers the same names, defaults, choices and help for it."""

from __future__ import annotations

import argparse

import pytest

from analytic import cli as analytic_cli
from vendor_shim import cli as measure_cli
from verify import cli as verify_cli


def _group(parser: argparse.ArgumentParser, title: str) -> dict[str, tuple]:
    group = next(g for g in parser._action_groups if g.title == title)
    return {a.option_strings[0]: (a.default, a.choices, a.help, a.const) for a in group._group_actions}


def test_the_three_clis_share_one_workload_group():
    groups = [
        _group(analytic_cli.build_parser(), "workload"),
        _group(measure_cli.build_parser(), "workload"),
        _group(verify_cli.build_parser("run_verify_end2end", vision_only=False), "workload"),
    ]
    assert groups[0] == groups[1]
    # the verify commands size many pages: their --decode-tokens also takes from-reference, with a mapping file and
    # a tokenizer beside it (core.decode_lengths); the default is the same 16
    per_page = ("--decode-tokens", "--decode-tokens-file", "--tokenizer")
    assert {k: v for k, v in groups[2].items() if k not in per_page} == {
        k: v for k, v in groups[0].items() if k != "--decode-tokens"
    }
    assert groups[2]["--decode-tokens"][0] == groups[0]["--decode-tokens"][0] == 16
    assert {"--mode", "--prompt-tokens", "--decode-tokens", "--dtype", "--lm-head", "--attn-impl"} <= set(groups[0])
    vision = _group(verify_cli.build_parser("run_verify_end2end_vision", vision_only=True), "workload")
    assert vision == {k: v for k, v in groups[0].items() if k not in ("--decode-tokens", "--lm-head", "--attn-impl")}


def test_measure_and_verify_share_one_vendor_group():
    assert _group(measure_cli.build_parser(), "vendor").keys() - {"--vision-only"} == _group(
        verify_cli.build_parser("run_verify_end2end", vision_only=False), "vendor"
    ).keys() - {"--no-cache", "--cache-dir", "--per-page-steps", "--jobs"}


@pytest.mark.parametrize(
    "parser",
    [analytic_cli.build_parser(), measure_cli.build_parser(), verify_cli.build_parser("run_verify_end2end", False)],
)
def test_help_shows_defaults_and_the_real_program_name(parser):
    text = parser.format_help()
    assert "(default: gundam)" in text and "(default: 16)" in text and "(default: auto)" in text
    assert "python -m analytic" not in text.splitlines()[0]


@pytest.mark.parametrize(
    ("words", "value"),
    [
        ([], None),
        (["--crop-mode"], True),
        (["--crop-mode", "off"], False),
        (["--no-crop-mode"], False),
        (["--crop-mode", "YES"], True),
    ],
)
def test_crop_mode_spellings(words, value):
    for parser in (analytic_cli.build_parser(), measure_cli.build_parser()):
        args = parser.parse_args([*words, "--width", "10", "--height", "10"])
        assert args.crop_mode is value
