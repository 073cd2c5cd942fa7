"""`timbral train`'s model options reach NMFParams, and bad values are refused with the option named."""

from __future__ import annotations

from click.testing import CliRunner

from training.cli import _params, main, train


def _parsed(*args: str):
    ctx = train.make_context("train", ["--data", "listens.csv", *args])
    kw = dict(ctx.params)
    return _params(kw)


def test_the_refinement_options_reach_the_params():
    p = _parsed("--confidence-shift", "0.7", "--confidence-sweeps", "25", "--confidence-reg", "12.5",
                "--confidence-alpha", "2")
    assert (p.confidence_shift, p.confidence_sweeps, p.confidence_reg, p.confidence_alpha) == (0.7, 25, 12.5, 2.0)
    assert _parsed("--confidence-shift", "0").confidence_shift == 0.0  # 0 turns the shift off
    defaults = _parsed()
    assert (defaults.confidence_shift, defaults.confidence_sweeps, defaults.confidence_reg) == (0.3, 20, "auto")


def test_a_negative_shift_is_refused_naming_the_option():
    result = CliRunner().invoke(main, ["train", "--data", "listens.csv", "--confidence-shift", "-0.5"])
    assert result.exit_code == 2 and "--confidence-shift" in result.output


def test_the_help_lists_the_shift_with_its_default():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    block = result.output.split("--confidence-shift", 1)[1].split("\n  -", 1)[0]  # up to the next option
    assert "value + shift" in " ".join(block.split()) and "[default: 0.3;" in block
