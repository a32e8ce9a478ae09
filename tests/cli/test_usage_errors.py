"""Non-finite numbers are usage errors at parse time (exit 2, the flag or key named, nothing
written), not black images with a bare NaN in metadata.json."""
from __future__ import annotations

import pytest

from bench.cli import main


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_guidance_is_a_usage_error(value, tmp_path, capsys):
    out = tmp_path / "samples"
    with pytest.raises(SystemExit) as stopped:           # argparse exits itself, with 2
        main(["sample", "--method", "ddim", "--steps", "1", "--teacher", "tiny", "--suite", "smoke",
              "--num-images", "1", f"--guidance={value}", "--out", str(out), "--quiet"])
    assert stopped.value.code == 2
    assert f"argument --guidance: expected a finite number, got '{value}'" in capsys.readouterr().err
    assert not out.exists()


def test_a_non_finite_config_value_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "samples"
    code = main(["sample", "--method", "ddim", "--steps", "1", "--teacher", "tiny", "--suite", "smoke",
                 "--num-images", "1", "--config", "eta=nan", "--out", str(out), "--quiet"])
    assert code == 2
    assert "--config eta=nan: expected a finite number" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--guidance=-2"], "argument --guidance: expected a guidance scale >= 0 (1 = none), got '-2'"),
    (["--config", "eta=5"], "eta must be <= 1 (1 is DDPM's posterior variance, Eq. 16), got 5.0"),
])
def test_out_of_range_numbers_are_usage_errors_with_the_reason(tmp_path, capsys, flags, message):
    out = tmp_path / "samples"
    try:
        code = main(["sample", "--method", "ddim", "--steps", "1", "--teacher", "tiny", "--suite", "smoke",
                     "--num-images", "1", *flags, "--out", str(out), "--quiet"])
    except SystemExit as stopped:                        # argparse's own exit for a flag's type
        code = stopped.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
