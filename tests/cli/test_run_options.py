"""`bench run --config` (plain K=V for every method, M:K=V for one) and `--max-train-steps`."""
from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.cli.commands import method_config
from bench.engine.students import students_dir


def test_config_items_go_to_their_methods():
    text = "seed=1,lcm:learning_rate=1e-5,dmd2:step_counts=1:2:4,toy_max_train_steps=7"
    assert method_config(text, "lcm", "lcm") == "seed=1,learning_rate=1e-5,toy_max_train_steps=7"
    assert method_config(text, "dmd2", "dmd2") == "seed=1,step_counts=1:2:4,toy_max_train_steps=7"
    # an experiment takes the items of its label and of its method
    assert method_config("lcm:seed=2,lcm-seed-1:seed=3", "lcm-seed-1", "lcm") == "seed=2,seed=3"
    assert method_config(None, "lcm", "lcm") is None


@pytest.mark.usefixtures("isolated_cache", "one_thread")
def test_run_trains_with_the_config_and_max_train_steps_it_is_given(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue ball\n")
    assert main(["run", "--methods", "lcm,scott", "--teacher", "tiny", "--steps", "1", "--prompts-file", str(prompts),
                 "--metrics", "latency", "--latency-runs", "20", "--throughput-batch", "1", "--max-train-steps", "2",
                 "--config", "seed=3,lcm:w_max=9.0", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    infos = (json.loads(path.read_text()) for path in students_dir().glob("*/student.json"))
    records = {info["method"]: info for info in infos}
    assert set(records) == {"lcm", "scott"}
    assert {r["trained_steps"] for r in records.values()} == {2}
    assert {r["config"]["seed"] for r in records.values()} == {3}
    assert records["lcm"]["config"]["w_max"] == 9.0


@pytest.mark.parametrize("flags, message", [
    (["--config", "no_such_field=1"], "has no field 'no_such_field'"),
    (["--config", "dmd:seed=1"], "'dmd' is not a method or experiment of this run"),
    (["--max-train-steps", "0"], "--max-train-steps must be >= 1"),
])
@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_run_option_errors_are_usage_errors_with_or_without_debug(tmp_path, capsys, flags, message, debug):
    assert main(["run", "--methods", "lcm", *flags, "--out", str(tmp_path / "out"), *debug]) == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1]
    assert ("Traceback" in err) == bool(debug)
    assert not (tmp_path / "out").exists()
