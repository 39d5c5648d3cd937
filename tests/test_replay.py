"""Replayed rollouts: one generator per seed, every replayed entry trains on the very same samples."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning import seed_everything

from rlpost.algorithms import GRPO, DrGRPO
from rlpost.compare import resolve_suite
from rlpost.compare.replay_report import analyse
from rlpost.compare.suite import SuiteError, load_suite
from rlpost.data import ArithmeticTask
from rlpost.replay import ReplayRollouts, generate, rollout_path
from rlpost.rollout import Rollout
from tests.compare.conftest import write_suite
from tests.conftest import make_trainer

TASK = {"class_path": "rlpost.data.ArithmeticTask",
        "init_args": {"num_prompts": 32, "num_val_prompts": 8, "max_operand": 20, "prompts_per_step": 2,
                      "eval_batch_size": 8}}
CONFIG = {"trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 3},
          "model": {"class_path": "rlpost.algorithms.GRPO",
                    "init_args": {"model_name_or_path": "builtin:arith-sft", "num_generations": 4,
                                  "max_completion_length": 4}},
          "data": TASK}


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory):
    """Seed 0's first 2 rollouts of the task, from the starting policy."""
    root = tmp_path_factory.mktemp("replay")
    generate(CONFIG, seed=0, steps=2, out=root / "seed0", fingerprint="abc")
    return root


def test_the_generator_saves_rollouts_of_the_starting_policy(replay_dir):
    manifest = json.loads((replay_dir / "seed0" / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["completions_per_rollout"] == 8 and manifest["fingerprint"] == "abc"
    rollout = Rollout.load(rollout_path(replay_dir / "seed0", 1))  # weights_only=True
    assert len(rollout) == 8 and rollout.old_logprobs.shape == rollout.completion_ids.shape
    assert rollout.ref_logprobs is None  # each entry computes its own reference log-probs


def train(cls, replay_dir, tmp_path, **kw):
    seed_everything(0)  # the run's seed picks <directory>/seed0
    model = cls(model_name_or_path="builtin:arith-sft", num_generations=4, max_completion_length=4, save_policy=False,
                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), **kw)
    task = ArithmeticTask(**TASK["init_args"])
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[ReplayRollouts(str(replay_dir), steps=2, fingerprint="abc")],
                           log_every_n_steps=1)
    trainer.fit(model, datamodule=task)
    return model.summary


def test_every_replayed_entry_trains_on_the_same_samples_then_on_its_own(replay_dir, tmp_path):
    saved = [Rollout.load(rollout_path(replay_dir / "seed0", i)) for i in range(2)]
    runs = [train(GRPO, replay_dir, tmp_path / "grpo", beta=0.04), train(DrGRPO, replay_dir, tmp_path / "dr", beta=0.0)]
    for summary in runs:
        assert summary["replayed_rollouts"] == 2 and summary["steps"] == 3
        assert summary["completions_generated"] == 3 * 8  # the replayed ones count in the budget
        for row, rollout in zip(summary["history"][:2], saved):  # steps 1, 2: the saved samples' rewards
            assert row["train/reward"] == pytest.approx(float(rollout.rewards.mean()), abs=1e-6)
    assert "train/kl" in runs[0]["history"][0] and "train/kl" not in runs[1]["history"][0]  # own reference (or none)
    assert runs[0]["phases"]["replay"]["s"] > 0 and runs[0]["phases"]["generation"]["s"] > 0  # step 3 generated


def test_replay_refuses_missing_or_foreign_rollouts(replay_dir, tmp_path):
    with pytest.raises(ValueError, match="generated for fingerprint 'abc', not 'other'"):
        seed_everything(0)
        model = GRPO(model_name_or_path="builtin:arith-sft", num_generations=4, max_completion_length=4)
        make_trainer(tmp_path, callbacks=[ReplayRollouts(str(replay_dir), 2, fingerprint="other")]).fit(
            model, datamodule=ArithmeticTask(**TASK["init_args"]))
    with pytest.raises(FileNotFoundError, match=r"seed1/manifest.json .*python -m rlpost.replay"):
        seed_everything(1)
        model = GRPO(model_name_or_path="builtin:arith-sft", num_generations=4, max_completion_length=4)
        make_trainer(tmp_path, callbacks=[ReplayRollouts(str(replay_dir), 2)]).fit(
            model, datamodule=ArithmeticTask(**TASK["init_args"]))


# ----------------------------------------------------------------------------- the suite


def replay_suite(tmp_path, replay, budget=None, overrides=None):
    return write_suite(tmp_path, budget=budget or {"prompts_per_step": 2, "num_generations": 2, "max_steps": 4,
                                                   "eval_prompts": 8, "eval_every": 2},
                       entries=[{"name": "grpo", "config": str(tmp_path / "tiny_grpo.yaml")},
                                {"name": "grpo-lr", "config": str(tmp_path / "tiny_grpo.yaml"),
                                 "overrides": overrides or {"model.init_args.optimizer.init_args.lr": 0.001}}],
                       replay=replay)


def test_a_replay_suite_gives_each_replayed_entry_the_generators_rollouts(tmp_path):
    suite = resolve_suite(load_suite(replay_suite(tmp_path, {"steps": 2})))
    assert suite.replay.generator == "grpo" and suite.replay.entries == ("grpo", "grpo-lr")
    for e in suite.entries:
        (cb,) = [c for c in e.run_config["trainer"]["callbacks"] if c["class_path"] == "rlpost.replay.ReplayRollouts"]
        assert cb["init_args"] == {"directory": str(tmp_path / "out" / "replay"), "steps": 2,
                                   "fingerprint": suite.replay.fingerprint()}
    assert "ReplayRollouts" not in json.dumps(suite.replay.run_config)  # the generator itself replays nothing


@pytest.mark.parametrize("replay, match", [
    ({"steps": 3}, r"replay.steps=3 ends at optimizer step 3, where no held-out evaluation happens"),
    ({"steps": 5}, r"replay.steps must be an integer in \[1, 4\]"),
    ({"steps": 2, "entries": ["nope"]}, r"replay.entries must name rlpost entries of this suite \(\['grpo', 'grpo-lr'\]\)"),
    ({"steps": 2, "every": 1}, r"replay: unknown key\(s\) \['every'\]"),
])
def test_a_replay_suite_that_cannot_work_is_refused(tmp_path, replay, match):
    with pytest.raises(SuiteError, match=match):
        load_suite(replay_suite(tmp_path, replay))


def test_replayed_entries_must_sample_alike(tmp_path):
    path = replay_suite(tmp_path, {"steps": 2}, overrides={"model.init_args.temperature": 0.7})
    with pytest.raises(SuiteError, match=r"entry 'grpo-lr' samples with temperature=0.7 but the replayed rollouts come "
                                         r"from entry 'grpo''s settings \(temperature=1.0\)"):
        resolve_suite(load_suite(path))


def test_the_loss_only_difference_is_paired_by_seed():
    def run(entry, seed, at_2, after):
        return {"entry": entry, "seed": seed, "summary": {"accuracy_after": after, "replayed_rollouts": 2},
                "val_history": [{"step": 0, "accuracy_greedy": 0.4}, {"step": 2, "accuracy_greedy": at_2}]}

    results = {"suite": {"baseline": "a", "budget": {"optimizer_steps_per_rollout": 1},
                         "replay": {"steps": 2, "entries": ["a", "b"], "generator": "a"}},
               "runs": [run("a", 0, 0.50, 0.8), run("b", 0, 0.60, 0.7), run("a", 1, 0.70, 0.9), run("b", 1, 0.90, 0.9),
                        run("a", 2, 0.40, 0.8), run("b", 2, 0.45, 0.9)]}
    out = analyse(copy.deepcopy(results))
    b = out["entries"]["b"]
    assert out["at_step"] == 2 and out["reference"] == "a"
    # per seed at step 2: 0.10, 0.20, 0.05 -> mean 0.11667; sd = 0.07638; t(0.975, 2) = 4.3027 -> h = 4.3027 * 0.07638 / sqrt(3)
    assert b["diff_at_replay_end"]["values"] == pytest.approx([0.10, 0.20, 0.05])
    assert b["diff_at_replay_end"]["mean"] == pytest.approx(0.116667, abs=1e-5)
    assert b["diff_at_replay_end"]["ci95"] == pytest.approx(4.302653 * 0.0763763 / 3 ** 0.5, abs=1e-4)
    assert b["diff_after"]["values"] == pytest.approx([-0.1, 0.0, 0.1])
    assert analyse({**results, "suite": {**results["suite"], "replay": None}}) is None
    assert yaml.safe_dump(out)  # plain data for results.json


def test_the_shipped_replay_suite_resolves():
    suite = resolve_suite(load_suite(Path(__file__).parents[1] / "comparisons" / "replay.yaml"))
    assert suite.replay.steps == 50 and set(suite.replay.entries) == {"grpo", "dapo", "dr_grpo"}
