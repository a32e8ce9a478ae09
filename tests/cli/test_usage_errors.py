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
