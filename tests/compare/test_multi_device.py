"""Suites on several processes: the budget is global (prompts per step over all processes, completions over
all ranks), so a 2-device suite passes its own budget check; the TRL row (one process) is refused there."""

import json

import pytest
import yaml

from rlpost.compare import main
from rlpost.compare import runner
from rlpost.compare.resolve import resolve_suite
from rlpost.compare.suite import SuiteError, load_suite
from tests.compare.conftest import TINY_GRPO, FakeLauncher, write_suite

TWO_DEVICES = {"devices": 2, "strategy": "ddp"}


def test_a_two_device_suite_gives_each_process_its_share_and_counts_globally(tmp_path):
    suite = resolve_suite(load_suite(write_suite(tmp_path, trainer=TWO_DEVICES)))
    b = suite.budget  # 2 prompts x G=2 per step, 2 steps: 8 completions over both processes
    for e in suite.entries:
        assert e.run_config["trainer"]["devices"] == 2 and e.run_config["trainer"]["strategy"] == "ddp"
        assert e.run_config["data"]["init_args"]["prompts_per_step"] == 1  # 2 prompts per step / 2 processes
        assert (e.plan.world_size, e.plan.prompts_per_step, e.plan.completions) == (2, 1, b.completions) == (2, 1, 8)
    # a run that generated 2 steps x 1 prompt x 2 completions on each of 2 ranks (summed in summary.json: 8)
    runs, failed = runner.execute(suite, launcher=FakeLauncher(), log=lambda s: None)
    assert not failed
    assert all(r["budget"]["ok"] for r in runner.collect(suite, runs))


def test_one_device_entry_and_two_device_entry_get_the_same_global_budget(tmp_path):
    cfg = tmp_path / "tiny_grpo.yaml"
    entries = [{"name": "one", "config": str(cfg)},
               {"name": "two", "config": str(cfg), "overrides": {"trainer.devices": 2, "trainer.strategy": "ddp"}}]
    suite = resolve_suite(load_suite(write_suite(tmp_path, entries=entries)))
    one, two = suite.entry("one").plan, suite.entry("two").plan
    assert (one.prompts_per_step, two.prompts_per_step) == (2, 1) and one.completions == two.completions == 8


@pytest.mark.parametrize("trainer, budget, match", [
    (TWO_DEVICES, {"prompts_per_step": 3}, r"entry 'grpo' .* runs on 2 processes, which do not divide the budget's "
                                           r"prompts_per_step=3"),
    ({"devices": "auto", "accelerator": "gpu"}, {}, r"entry 'grpo' .*trainer.devices='auto' \(accelerator='gpu'\) gives "
                                                    r"no process count"),
    ({"max_steps": 7}, {}, r"trainer sets \['max_steps'\], which the suite's budget sets"),
])
def test_unsplittable_or_unknown_world_sizes_are_refused(tmp_path, trainer, budget, match):
    b = {"prompts_per_step": 2, "num_generations": 2, "max_steps": 2, "eval_prompts": 8, **budget}
    with pytest.raises(SuiteError, match=match):
        resolve_suite(load_suite(write_suite(tmp_path, trainer=trainer, budget=b)))


def test_the_trl_row_is_refused_in_a_multi_device_suite_naming_it(tmp_path):
    path = write_suite(tmp_path, trainer=TWO_DEVICES)
    raw = yaml.safe_load(path.read_text())
    raw["entries"].append({"name": "trl-grpo", "trl_reference": "grpo"})
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=r"entry 'trl-grpo': the TRL reference row runs on one process, but entry "
                                         r"'grpo' runs on 2 .*remove entry 'trl-grpo'"):
        resolve_suite(load_suite(path))


@pytest.mark.slow
def test_a_real_two_process_suite_passes_its_budget_check(tmp_path, capsys):
    """`rlpost compare` on a suite whose entries each train 2 steps on 2 CPU processes (DDP, gloo)."""
    config = {**TINY_GRPO, "trainer": {**TINY_GRPO["trainer"], "accelerator": "cpu"}}
    path = write_suite(tmp_path, config=config, seeds=[0], trainer={"devices": 2, "strategy": "ddp"},
                       entries=[{"name": "grpo", "config": str(tmp_path / "tiny_grpo.yaml")}],
                       budget={"prompts_per_step": 4, "num_generations": 2, "max_steps": 2, "eval_prompts": 8})
    main([str(path)])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (run,) = results["runs"]
    assert run["budget"] == {"optimizer_steps": 2, "completions_generated": 2 * 4 * 2, "eval_prompts": 8, "ok": True,
                             "problems": []}
    assert run["summary"]["plan"]["world_size"] == 2 and run["summary"]["plan"]["prompts_per_step"] == 2
