import re

import pytest
import yaml

from rlpost.compare import main
from rlpost.compare.resolve import resolve_suite
from rlpost.compare.suite import SuiteError, load_suite
from tests.compare.conftest import TINY_GRPO, write_suite


def test_a_valid_suite_resolves_with_the_budget_put_into_every_entry(tmp_path):
    suite = resolve_suite(load_suite(write_suite(tmp_path)))
    assert [e.name for e in suite.entries] == ["grpo", "grpo-lr"]
    assert suite.baseline == "grpo"
    for e in suite.entries:
        m, d, t = e.resolved["model"]["init_args"], e.resolved["data"]["init_args"], e.resolved["trainer"]
        assert (m["num_generations"], d["prompts_per_step"], d["num_val_prompts"], t["max_steps"]) == (2, 2, 8, 2)
        assert d["num_prompts"] == 32  # the suite's task replaced the config's data section
        assert e.plan.completions == suite.budget.completions == 2 * 2 * 2
        assert "trainer.max_steps: 50 -> 2" in e.changes
    lr = suite.entry("grpo-lr").resolved["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    assert lr == 0.001


def test_trl_reference_mirrors_its_entry(tmp_path):
    path = write_suite(tmp_path, entries=None)
    raw = yaml.safe_load(path.read_text())
    raw["entries"].append({"name": "trl", "trl_reference": "grpo"})
    path.write_text(yaml.safe_dump(raw))
    suite = resolve_suite(load_suite(path))
    g = suite.entry("trl").run_config["grpo_config"]
    assert g["learning_rate"] == 0.003 and g["num_generations"] == 2 and g["per_device_train_batch_size"] == 4
    assert (g["loss_type"], g["beta"], g["gradient_checkpointing"], g["bf16"]) == ("grpo", 0.0, False, False)
    assert suite.entry("trl").plan.completions == 8


def test_entry_with_more_optimizer_steps_per_rollout_is_refused_naming_it(tmp_path):
    entries = [{"name": "grpo", "config": str(tmp_path / "tiny_grpo.yaml")},
               {"name": "grpo-mu2", "config": str(tmp_path / "tiny_grpo.yaml"),
                "overrides": {"model.init_args.num_iterations": 2}}]
    path = write_suite(tmp_path, entries=entries, budget={"prompts_per_step": 2, "num_generations": 2, "max_steps": 4,
                                                          "eval_prompts": 8})
    with pytest.raises(SuiteError, match=r"unequal budgets: entry 'grpo-mu2' \(GRPO\) would take 4 optimizer steps on "
                                         r"8 completions \(2 optimizer step\(s\) per rollout.*budget is 4 steps on 16"):
        resolve_suite(load_suite(path))


def test_mini_batches_that_multiply_optimizer_steps_are_refused(tmp_path):
    cfg = {**TINY_GRPO, "model": {**TINY_GRPO["model"],
                                  "init_args": {**TINY_GRPO["model"]["init_args"], "mini_batch_size": 2}}}
    path = write_suite(tmp_path, config=cfg)
    with pytest.raises(SuiteError, match=r"unequal budgets: entry 'grpo' .*\(2 optimizer step\(s\) per rollout"):
        resolve_suite(load_suite(path))


@pytest.mark.parametrize("key", ["trainer.max_steps", "model.init_args.num_generations", "data.init_args.prompts_per_step"])
def test_entry_overriding_a_budget_field_is_refused(tmp_path, key):
    entries = [{"name": "grpo", "config": str(tmp_path / "tiny_grpo.yaml")},
               {"name": "greedy", "config": str(tmp_path / "tiny_grpo.yaml"), "overrides": {key: 3}}]
    with pytest.raises(SuiteError, match=rf"unequal budgets: entry 'greedy' overrides '{key}'"):
        load_suite(write_suite(tmp_path, entries=entries))


def test_unknown_algorithm_is_refused_with_the_known_ones(tmp_path):
    cfg = {**TINY_GRPO, "model": {**TINY_GRPO["model"], "class_path": "rlpost.algorithms.GRPOO"}}
    path = write_suite(tmp_path, config=cfg)
    with pytest.raises(SuiteError, match=r"entry 'grpo' .*unknown algorithm 'rlpost.algorithms.GRPOO'.*known "
                                         r"algorithms: .*GRPO.*PPO"):
        resolve_suite(load_suite(path))


def test_a_class_that_is_not_an_algorithm_is_refused(tmp_path):
    cfg = {**TINY_GRPO, "model": {**TINY_GRPO["model"], "class_path": "torch.nn.Linear"}}
    with pytest.raises(SuiteError, match=r"'torch.nn.Linear' is not an on-policy algorithm"):
        resolve_suite(load_suite(write_suite(tmp_path, config=cfg)))


def test_trl_reference_of_a_non_grpo_entry_is_refused(tmp_path):
    cfg = {**TINY_GRPO, "model": {**TINY_GRPO["model"], "class_path": "rlpost.algorithms.RLOO"}}
    path = write_suite(tmp_path, config=cfg, entries=[{"name": "rloo", "config": str(tmp_path / "tiny_grpo.yaml")},
                                                      {"name": "trl", "trl_reference": "rloo"}])
    with pytest.raises(SuiteError, match=r"entry 'trl': TRL reference of entry 'rloo': TRL's GRPOTrainer mirrors "
                                         r"rlpost.algorithms.GRPO only"):
        resolve_suite(load_suite(path))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(entries=[{"name": "a"}]), r"entry 'a': give exactly one of config .* or trl_reference"),
        (dict(entries=[{"name": "t", "trl_reference": "nope"}]), r"entry 't': trl_reference 'nope' must name an rlpost entry"),
        (dict(budget={"prompts_per_step": 2, "num_generations": 2, "max_steps": 2}), r"budget is missing \['eval_prompts'\]"),
        (dict(budget={"prompts_per_step": 2, "num_generations": 1, "max_steps": 2, "eval_prompts": 8}),
         r"num_generations must be >= 2"),
        (dict(seeds=[]), r"seeds must be a non-empty list of integers"),
        (dict(seeds=[1, 1]), r"seeds repeat"),
        (dict(baseline="ppo"), r"baseline 'ppo' is not an entry"),
        (dict(budgte={}), r"unknown key\(s\) \['budgte'\]"),
        (dict(entries=[{"name": "a", "config": "missing.yaml"}]), r"entry 'a' \(missing.yaml\): config file not found"),
    ],
    ids=["no-config", "bad-trl-target", "missing-budget-key", "G=1", "no-seeds", "repeated-seeds", "bad-baseline",
         "typo", "missing-config"],
)
def test_malformed_suites_are_refused(tmp_path, change, match):
    change = dict(change)
    seeds = change.pop("seeds", (0, 1))
    with pytest.raises(SuiteError, match=match):
        resolve_suite(load_suite(write_suite(tmp_path, seeds=seeds, **change)))


def test_cli_refuses_with_a_clear_message_and_exit_status_2(tmp_path, capsys):
    cfg = {**TINY_GRPO, "model": {**TINY_GRPO["model"], "class_path": "rlpost.algorithms.Nope"}}
    with pytest.raises(SystemExit) as exit_info:
        main([str(write_suite(tmp_path, config=cfg)), "--dry-run"])
    assert exit_info.value.code == 2
    assert "rlpost compare: refused: entry 'grpo'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_shipped_suites_resolve():
    for path in ("comparisons/arith.yaml", "comparisons/variants.yaml"):
        suite = resolve_suite(load_suite(path))
        assert {e.plan.completions for e in suite.entries} == {suite.budget.completions}, path
        assert suite.threads == 1


@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "..", ".hidden", "a/b", "a\\b", "", "x" * 101, "ok;rm"])
def test_unsafe_entry_names_are_refused(tmp_path, name):
    cfg = {"name": "grpo", "config": "tiny_grpo.yaml"}
    path = write_suite(tmp_path, entries=[cfg, {"name": name, "config": str(tmp_path / "tiny_grpo.yaml")}])
    with pytest.raises(SuiteError, match=rf"entry #2 name {re.escape(repr(name))} is not allowed: names become paths"):
        load_suite(path)


def test_unsafe_suite_name_is_refused(tmp_path):
    with pytest.raises(SuiteError, match=r"suite name '\.\./up' is not allowed"):
        load_suite(write_suite(tmp_path, name="../up"))


@pytest.mark.parametrize("name", ["grpo", "grpo-lr_2", "v1.5", "0"])
def test_safe_entry_names_are_accepted(tmp_path, name):
    path = write_suite(tmp_path, entries=[{"name": name, "config": str(tmp_path / "tiny_grpo.yaml")}])
    assert load_suite(path).entries[0].name == name
