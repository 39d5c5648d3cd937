"""Preference reward model: the loss, the shipped preference set, training, saving, scoring."""

import json
import math
from pathlib import Path

import pytest
import torch

import rlpost.algorithms as algorithms
from rlpost.data import ArithmeticPreferences, ArithmeticTask, PreferenceData
from rlpost.data.arithmetic import carry_dropped_sum
from rlpost.scoring import RewardModel, RewardModelScorer, ScorerError, ScorerSet, bradley_terry_loss
from tests.conftest import make_trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# --------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_hand_computed():
    chosen = torch.tensor([0.0, 1.0, 0.0])
    rejected = torch.tensor([0.0, 0.0, 1.0])
    # margins 0, 1, -1: -log sigmoid(m) = log(1 + e^-m) = 0.693147, 0.313262, 1.313262; mean 0.773224
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), torch.tensor(0.773224), atol=1e-6, rtol=0)


def test_bradley_terry_loss_depends_only_on_the_margin():
    c, r = torch.tensor([2.0, -1.0]), torch.tensor([1.5, -3.0])
    torch.testing.assert_close(bradley_terry_loss(c, r), bradley_terry_loss(c + 7.0, r + 7.0))


# --------------------------------------------------------------------------- the shipped preference set


def test_arithmetic_preferences_are_deterministic_and_correctly_labelled():
    a, b = ArithmeticPreferences(num_prompts=200, num_val_prompts=50), ArithmeticPreferences(num_prompts=200, num_val_prompts=50)
    a.setup(), b.setup()
    assert a.train_dataset.to_dict() == b.train_dataset.to_dict()
    assert len(a.train_dataset) == 400 and len(a.val_dataset) == 100  # pairs_per_prompt = 2
    for row in a.train_dataset:
        x, y = map(int, row["prompt"].removesuffix("=").split("+"))
        assert row["chosen"] == str(x + y) and row["rejected"] != row["chosen"]
        if row["kind"] == "carry_dropped":
            assert row["rejected"] == str(carry_dropped_sum(x, y))
    assert set(a.train_dataset["kind"]) == {"carry_dropped", "off_by_one", "off_by_ten", "random", "digit_count"}


def test_held_out_preference_prompts_are_the_arithmetic_tasks_validation_prompts():
    prefs = ArithmeticPreferences(num_prompts=500, num_val_prompts=64)
    task = ArithmeticTask(num_prompts=500, num_val_prompts=64)
    prefs.setup(), task.setup()
    assert set(prefs.val_dataset["prompt"]) == set(task.val_dataset["prompt"])
    assert not set(prefs.train_dataset["prompt"]) & set(prefs.val_dataset["prompt"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rejected_kinds=["typo"]), r"rejected_kinds=\['typo'\] must be distinct names"),
        (dict(rejected_kinds=["random", "random"]), "must be distinct names"),
        (dict(pairs_per_prompt=6), r"pairs_per_prompt must be in \[1, 5\]"),
        (dict(batch_size=0), "batch_size and eval_batch_size must be >= 1"),
    ],
)
def test_bad_preference_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArithmeticPreferences(num_prompts=10, num_val_prompts=5, **kwargs)


# --------------------------------------------------------------------------- preference files


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_preference_data_maps_columns_from_local_files(tmp_path):
    rows = [{"question": f"{i}+1=", "good": str(i + 1), "bad": str(i), "meta": "x"} for i in range(10)]
    data = PreferenceData(data_files=write_jsonl(tmp_path / "prefs.jsonl", rows), val_split=None, val_fraction=0.2,
                          prompt_column="question", chosen_column="good", rejected_column="bad", batch_size=4)
    data.setup("fit")
    assert data.train_dataset.column_names == ["prompt", "chosen", "rejected"]
    assert len(data.train_dataset) == 8 and len(data.val_dataset) == 2
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"prompt", "chosen", "rejected"} and len(batch["prompt"]) == 4


def test_preference_data_names_a_missing_column_and_an_empty_split(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "test": write_jsonl(tmp_path / "test.jsonl", rows)}
    with pytest.raises(ValueError, match=r"split 'train' of data_files=.* has no column 'worse' \(rejected_column\)"):
        PreferenceData(data_files=files, rejected_column="worse").setup("fit")
    files["test"] = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=r"split 'test' of data_files=.* is empty"):
        PreferenceData(data_files=files).setup("fit")


# --------------------------------------------------------------------------- train, save, score


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A reward model trained for a few steps from builtin:tiny and saved (a second or two)."""
    root = tmp_path_factory.mktemp("rm")
    data = ArithmeticPreferences(num_prompts=64, num_val_prompts=16, max_operand=20, batch_size=16)
    model = RewardModel(model_name_or_path="builtin:tiny", output_dir=str(root / "rm"))
    make_trainer(root, max_steps=4).fit(model, datamodule=data)
    return model, root / "rm", data


def test_reward_model_saves_and_writes_its_held_out_pairwise_accuracy(tiny_rm):
    model, out, data = tiny_rm
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    summary = json.loads(Path(model.summary_path).read_text())
    assert summary["algorithm"] == "RewardModel" and summary["steps"] == 4
    assert summary["val_pairs"] == len(data.val_dataset) == 32
    for key in ("accuracy_before", "accuracy_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert set(summary["accuracy_after_by_kind"]) <= {"carry_dropped", "off_by_one", "off_by_ten", "random", "digit_count"}


def test_scorer_loads_the_saved_model_and_matches_training_scores_batched(tiny_rm):
    model, out, data = tiny_rm
    rows = data.val_dataset[:10]
    scorer = RewardModelScorer(str(out), batch_size=3)
    scores = scorer(rows["prompt"], rows["chosen"], answer=rows["chosen"])  # extra columns are ignored
    assert isinstance(scores, list) and len(scores) == 10 and all(isinstance(s, float) for s in scores)
    assert scores == pytest.approx(RewardModelScorer(str(out), batch_size=64)(rows["prompt"], rows["chosen"]), abs=1e-5)
    model.eval()
    with torch.no_grad():
        trained = model(rows["prompt"], rows["chosen"]).tolist()
    assert scores == pytest.approx(trained, abs=1e-5)  # the same text and tokens in training and scoring


def test_scorer_runs_without_autograd_and_is_frozen(tiny_rm):
    _, out, _ = tiny_rm
    scorer = RewardModelScorer(str(out))
    assert not any(p.requires_grad for p in scorer.model.parameters()) and not scorer.model.training
    seen = []
    hook = scorer.model.register_forward_hook(lambda mod, args, output: seen.append(torch.is_grad_enabled()))
    with torch.enable_grad():
        scorer(["1+1="], ["2"])
    hook.remove()
    assert seen == [False]


def test_conversational_pairs_are_scored_through_the_chat_template(tiny_rm):
    _, out, _ = tiny_rm
    scorer = RewardModelScorer(str(out))
    scorer.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    chat = scorer([[{"role": "user", "content": "12+5="}]], [[{"role": "assistant", "content": "17"}]])
    assert chat == pytest.approx(scorer(["12+5="], ["17"]), abs=1e-6)
    with pytest.raises(ValueError, match="both be strings or both message lists"):
        scorer(["12+5="], [[{"role": "assistant", "content": "17"}]])


def test_scorer_errors_are_clear(tiny_rm):
    _, out, _ = tiny_rm
    with pytest.raises(ValueError, match=r"unknown built-in reward model 'builtin:nope'"):
        RewardModelScorer("builtin:nope")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RewardModelScorer(str(out), batch_size=0)
    too_long = ScorerSet({"rm": RewardModelScorer(str(out))})
    with pytest.raises(ScorerError, match=r"scorer 'rm' raised ValueError: sequence of \d+ tokens exceeds the reward model's 64"):
        too_long(["1+1="], ["2" * 80])


# --------------------------------------------------------------------------- the shipped reward model


def test_shipped_reward_model_reaches_090_held_out_pairwise_accuracy():
    data = ArithmeticPreferences()  # the configuration configs/rm_arith.yaml trains on
    data.setup()
    scorer = RewardModelScorer("builtin:arith-rm", batch_size=256)
    val = data.val_dataset
    chosen = scorer(val["prompt"], val["chosen"])
    rejected = scorer(val["prompt"], val["rejected"])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(val)
    assert accuracy >= 0.9


def test_shipped_reward_model_prefers_the_true_sum_to_the_carry_dropped_one():
    scorer = RewardModelScorer("builtin:arith-rm")
    prompts = ["47+38=", "19+25=", "68+57="]
    true, dropped = ["85", "44", "125"], ["75", "34", "15"]
    assert all(t > d for t, d in zip(scorer(prompts, true), scorer(prompts, dropped)))


@pytest.mark.parametrize("algorithm", ["GRPO", "PPO"])
def test_reward_model_scores_an_on_policy_fit(tmp_path, algorithm):
    if not hasattr(algorithms, algorithm):
        pytest.skip(f"rlpost.algorithms has no {algorithm} yet")
    task = ArithmeticTask(num_prompts=16, num_val_prompts=4, prompts_per_step=2,
                          scorers={"reward_model": RewardModelScorer("builtin:arith-rm")})
    model = getattr(algorithms, algorithm)(model_name_or_path="builtin:arith-sft", num_generations=4,
                                           max_completion_length=4, beta=0.0, save_policy=False)
    make_trainer(tmp_path, max_steps=2).fit(model, datamodule=task)
    assert len(model.history) == 2
    for h in model.history:
        assert math.isfinite(h["train/rewards/reward_model/mean"])
        assert h["train/reward"] == pytest.approx(h["train/rewards/reward_model/mean"], abs=1e-5)
        assert "train/rewards/accuracy/mean" not in h  # the verifier only measures, it does not reward


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["rm_arith.yaml", "grpo_rm_arith.yaml"])
def test_configs_parse(name):
    from rlpost.cli import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code in (0, None)


@pytest.mark.slow
def test_rebuilding_a_small_reward_model_from_the_warm_start_learns(tmp_path):
    data = ArithmeticPreferences(num_prompts=2000, num_val_prompts=128, batch_size=64)
    model = RewardModel(model_name_or_path="builtin:arith-sft", output_dir=str(tmp_path / "rm"),
                        center_rewards_coefficient=0.01)
    make_trainer(tmp_path, max_steps=300).fit(model, datamodule=data)
    summary = json.loads(Path(model.summary_path).read_text())
    assert summary["accuracy_before"] < 0.7 and summary["accuracy_after"] >= 0.85


@pytest.mark.slow
def test_grpo_scored_only_by_the_reward_model_raises_its_score_and_the_verifier_accuracy(tmp_path):
    from rlpost.cli import cli_main

    cli = cli_main(["fit", "--config", str(CONFIGS / "grpo_rm_arith.yaml"), f"--trainer.default_root_dir={tmp_path}",
                    "--trainer.max_steps=100",
                    "--trainer.enable_progress_bar=false"])
    summary = json.loads(Path(cli.model.summary_path).read_text())
    rm = [h["train/rewards/reward_model/mean"] for h in summary["history"]]
    assert sum(rm[-10:]) / 10 > sum(rm[:10]) / 10
    # and on the held-out prompts: the RM's mean score of the greedy completions, before vs after
    assert summary["rewards_after"]["reward_model"] > summary["rewards_before"]["reward_model"]
    assert summary["accuracy_after"] > summary["accuracy_before"] + 0.1
