import json

import pytest
import yaml

from rlpost.compare import main
from rlpost.compare.schema import SUMMARY, validate
from rlpost.compare.trl_reference import EXPLICIT_FIELDS, differences, run, trl_spec
from tests.compare.conftest import TINY_GRPO, write_suite

MODEL = {"class_path": "rlpost.algorithms.GRPO", "init_args": {
    "model_name_or_path": "builtin:tiny", "num_generations": 2, "max_completion_length": 4, "temperature": 1.0,
    "top_p": 1.0, "top_k": 0, "beta": 0.0, "num_iterations": 1, "mini_batch_size": None, "micro_batch_size": None,
    "epsilon": 0.2, "epsilon_high": None, "loss_type": "grpo", "scale_rewards": "group", "max_grad_norm": 1.0,
    "eval_temperature": 1.0, "dtype": None, "generation_backend": "lean",
    "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "betas": [0.9, 0.999], "eps": 1e-8,
                                                                   "weight_decay": 0.0}}}}
DATA = {"class_path": "rlpost.data.ArithmeticTask",
        "init_args": {"num_prompts": 32, "num_val_prompts": 8, "max_operand": 9, "prompts_per_step": 2, "eval_batch_size": 8}}
BUDGET = {"prompts_per_step": 2, "max_steps": 2, "eval_every": 1}


def _model(**init):
    m = json.loads(json.dumps(MODEL))
    m["init_args"].update(init)
    return m


def test_spec_sets_every_field_whose_trl_default_differs():
    g = trl_spec(_model(beta=0.04), DATA, BUDGET, "grpo")["grpo_config"]
    assert (g["loss_type"], g["beta"], g["learning_rate"], g["num_generations"]) == ("grpo", 0.04, 0.003, 2)
    assert (g["gradient_checkpointing"], g["bf16"], g["fp16"], g["use_bias_correction_kl"]) == (False, False, False, False)
    assert (g["lr_scheduler_type"], g["warmup_steps"], g["weight_decay"]) == ("constant", 0, 0.0)
    # one optimizer step per rollout of B x G completions
    assert (g["per_device_train_batch_size"], g["steps_per_generation"], g["gradient_accumulation_steps"]) == (4, 1, 1)
    assert set(EXPLICIT_FIELDS) <= set(g)
    changed = {k for k, _, _ in differences(trl_spec(_model(beta=0.04), DATA, BUDGET, "grpo"))}
    assert {"loss_type", "beta", "gradient_checkpointing", "bf16", "use_bias_correction_kl", "lr_scheduler_type"} <= changed


@pytest.mark.parametrize(
    "model, match",
    [
        ({**MODEL, "class_path": "rlpost.algorithms.PPO"}, r"mirrors rlpost.algorithms.GRPO only, not 'rlpost.algorithms.PPO'"),
        (_model(mini_batch_size=2), r"mini_batch_size/micro_batch_size must be unset"),
        (_model(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}), r"optimizer 'torch.optim.SGD' has no GRPOConfig"),
    ],
    ids=["ppo", "mini-batches", "sgd"],
)
def test_spec_refuses_what_trl_cannot_mirror(model, match):
    with pytest.raises(ValueError, match=match):
        trl_spec(model, DATA, BUDGET, "x")


def test_trl_run_writes_a_summary_in_the_rlpost_schema(tmp_path):
    spec = trl_spec(_model(), DATA, BUDGET, "grpo")
    summary = run(spec, seed=0, out_dir=tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
    validate(summary, SUMMARY)
    assert summary["completions_generated"] == 2 * 2 * 2 and summary["rollouts"] == 2 and summary["eval_prompts"] == 8
    assert [h["step"] for h in summary["history"]] == [1, 2] and "train/reward" in summary["history"][0]
    assert [v["step"] for v in summary["val_history"]] == [0, 1, 2]  # before, every step (eval_every=1), after
    b = summary["memory_breakdown"]
    assert b["policy"]["gradients"] == b["policy"]["parameters"] > 0  # taken after the first step, before zero_grad
    assert b["policy"]["optimizer_state"] >= 2 * b["policy"]["parameters"]  # AdamW's two moments
    assert b["reference"]["parameters"] == 0  # beta = 0: TRL builds no reference either
    assert summary["generation_s"] >= summary["phases"]["generation"]["s"] > 0 and summary["training_s"] > 0
    # TRL's step under rlpost's phase names: each wrapped method was timed, and the phases add up to the two totals
    phases = {k: v["s"] for k, v in summary["phases"].items()}
    assert all(phases[p] > 0 for p in ("generation", "scoring", "rollout_other", "forward", "backward", "optimizer",
                                      "logging")), phases
    assert phases["ref_logprobs"] == 0  # beta = 0: no reference forward
    rollout = sum(phases[p] for p in ("generation", "scoring", "old_logprobs", "ref_logprobs", "rollout_other"))
    assert summary["generation_s"] == pytest.approx(rollout)
    assert summary["training_s"] == pytest.approx(sum(phases.values()) - rollout - phases["logging"])
    assert summary["hparams"]["loss_type"] == "grpo" and summary["hparams"]["gradient_checkpointing"] is False


@pytest.mark.slow
def test_compare_end_to_end_with_rlpost_and_trl(tmp_path):
    """Real processes: builtin:tiny GRPO and its TRL mirror, one seed, two steps."""
    path = write_suite(tmp_path, seeds=(0,), entries=[{"name": "grpo", "config": str(tmp_path / "tiny_grpo.yaml")},
                                                      {"name": "trl", "trl_reference": "grpo"}],
                       budget={"prompts_per_step": 2, "num_generations": 2, "max_steps": 2, "eval_prompts": 8,
                               "eval_every": 1}, threads=1)
    main([str(path)])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    validate(results)
    runs = {r["entry"]: r for r in results["runs"]}
    assert all(r["budget"]["ok"] for r in runs.values())
    # the same evaluator on the same starting model: identical greedy accuracy before training
    assert runs["grpo"]["summary"]["accuracy_before"] == runs["trl"]["summary"]["accuracy_before"]
    assert [v["step"] for v in runs["grpo"]["val_history"]] == [0, 1, 2]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "rlpost grpo / TRL (trl)" in report and "## TRL reference `trl`" in report
    assert yaml.safe_load((tmp_path / "out" / "configs" / "grpo.yaml").read_text())["trainer"]["max_steps"] == 2
    assert TINY_GRPO["trainer"]["max_steps"] == 50  # the entry's own config is left alone
