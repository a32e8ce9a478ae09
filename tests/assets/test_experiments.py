"""Named experiments (bench.assets.experiments): TOML files of a method, its config overrides and a
label, run by `bench run --experiment`."""
from __future__ import annotations

import pytest

from bench.assets.experiments import experiment_names, load_experiment
from bench.core.errors import UsageError
from methods import get_method_class

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.mark.parametrize("name", experiment_names())
def test_every_shipped_experiment_builds_its_method(name):
    experiment = load_experiment(name)
    method = experiment.build()
    assert method.name == experiment.method and experiment.description
    default = get_method_class(experiment.method)()
    changed = {k for k, v in method.config_dict().items() if v != default.config_dict()[k]}
    assert changed and changed <= set(experiment.overrides) | {"toy"}     # an explicit X leaves the toy schedule


def test_bad_experiments_are_one_usage_error_naming_the_file(tmp_path):
    with pytest.raises(UsageError, match=r"no file .*lcm/ablations/nope.toml; experiments are <method>/<name>: .*lcm/"):
        load_experiment("lcm/nope")
    folder = tmp_path / "lcm" / "ablations"
    folder.mkdir(parents=True)
    (folder / "typo.toml").write_text('description = "x"\n[config]\nno_such_field = 1\n')
    with pytest.raises(UsageError, match=r"experiment lcm/typo \(.*typo.toml\): --config: LCMConfig has no field"):
        load_experiment("lcm/typo", root=tmp_path).build()
    (folder / "bare.toml").write_text('[config]\nseed = 1\n')
    with pytest.raises(UsageError, match="takes description"):
        load_experiment("lcm/bare", root=tmp_path)


def test_run_labels_rows_and_samples_with_the_experiment(tmp_path):
    """`bench run --methods lcm --experiment lcm/train-seed-1` on the tiny teacher: two labels, two
    students (the seed is part of the training fingerprint), rows under each label."""
    from bench.cli import main
    from bench.scoring.results import load_all

    code = main(["run", "--methods", "lcm", "--experiment", "lcm/train-seed-1", "--steps", "1", "--teacher", "tiny",
                 "--suite", "smoke", "--num-images", "2", "--metrics", "fid", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    frame = load_all(tmp_path / "results")
    assert set(frame["method"]) == {"lcm", "lcm-train-seed-1"}
    assert len(set(frame["fingerprint"])) == 2
    root = tmp_path / "samples" / "smoke" / "tiny"
    assert len(list((root / "lcm-train-seed-1" / "steps1-g3-seed0").glob("*.png"))) == 2
    assert main(["run", "--experiment", "lcm/train-seed-1,lcm/train-seed-1", "--steps", "1", "--teacher", "tiny",
                 "--suite", "smoke", "--num-images", "2", "--out", str(tmp_path / "twice"), "--quiet"]) == 2
