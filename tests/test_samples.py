"""Completion samples: TensorBoard text and completions.jsonl during training, eval_completions.jsonl at
every held-out evaluation."""

import json
from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlpost.algorithms import GRPO
from rlpost.data import ArithmeticTask, arithmetic_verifier
from rlpost.losses import group_advantages
from rlpost.rollout import Rollout
from rlpost.samples import SAMPLE_PROMPTS, CompletionSamples
from tests.conftest import make_trainer

G = 4


def fit(tmp_path, **model_kw):
    model = GRPO(model_name_or_path="builtin:arith-sft", num_generations=G, max_completion_length=4,
                 optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), save_policy=False, **model_kw)
    task = ArithmeticTask(num_prompts=32, num_val_prompts=8, max_operand=20, prompts_per_step=3, eval_batch_size=8)
    logger = TensorBoardLogger(str(tmp_path), name="", version=0)
    make_trainer(tmp_path, max_steps=2, logger=logger, log_every_n_steps=1).fit(model, datamodule=task)
    return model, Path(logger.log_dir)


def test_a_two_step_fit_writes_completion_samples_to_tensorboard_and_jsonl(tmp_path):
    model, run_dir = fit(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * SAMPLE_PROMPTS * G + [2] * SAMPLE_PROMPTS * G  # 2 of the 3 prompts, all G
    for step in (1, 2):
        mine = [r for r in rows if r["step"] == step]
        answers = [str(sum(map(int, r["prompt"][:-1].split("+")))) for r in mine]
        # the reward is the verifier's on the text shown, and each scorer is recorded by name
        verdicts = arithmetic_verifier([r["prompt"] for r in mine], [r["completion"] for r in mine], answers)
        assert [r["reward"] for r in mine] == [r["rewards"]["accuracy"] for r in mine] == verdicts
        # the advantage is GRPO's group-relative one of those rewards (groups of G contiguous)
        expected = group_advantages(torch.tensor(verdicts), G)
        torch.testing.assert_close(torch.tensor([r["advantage"] for r in mine]), expected, atol=1e-5, rtol=0)
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("completions/text_summary")}
    assert sorted(texts) == [1, 2]
    assert all(f"| {r['prompt']} | {r['completion']} |" in texts[r["step"]] for r in rows if r["completion"])


def test_every_evaluation_saves_its_greedy_completions(tmp_path):
    model, run_dir = fit(tmp_path, log_completions_every_n_steps=0)
    assert not (run_dir / "completions.jsonl").exists()  # 0: off
    rows = [json.loads(line) for line in (run_dir / "eval_completions.jsonl").read_text().splitlines()]
    for evaluation in model.summary["val_history"]:
        mine = [r for r in rows if r["step"] == evaluation["step"]]
        assert len(mine) == 8 and {r["stage"] for r in mine} == {"fit"}
        assert sum(r["accuracy"] for r in mine) / 8 == evaluation["accuracy_greedy"]
    assert sorted({r["step"] for r in rows}) == [0, 2]


def test_a_sample_averages_per_token_advantages_over_each_completions_tokens():
    # G = 2 per prompt, 3 prompts: the sample keeps the first SAMPLE_PROMPTS = 2 prompts (4 rows)
    prompts = ["a", "a", "b", "b", "c", "c"]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
    adv = torch.tensor([[1.0, 3.0, 9.0], [3.0, 3.0, 6.0], [-2.0, 5.0, 5.0], [0.5, 1.5, 7.0], [0, 0, 0], [0, 0, 0]])
    n = len(prompts)
    rollout = Rollout(prompt_ids=torch.zeros(n, 1), prompt_mask=torch.ones(n, 1), completion_ids=torch.zeros(n, 3),
                      completion_mask=mask, rewards=torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 0.0]),
                      group_ids=torch.tensor([0, 0, 1, 1, 2, 2]), truncated=torch.zeros(n, dtype=torch.bool),
                      prompts=prompts, completions=list("uvwxyz"),
                      scorer_rewards={"s": torch.tensor([1.0, float("nan"), 0.5, 0.5, 0.0, 0.0])}, advantages=adv)
    samples = CompletionSamples(every=2)
    samples.take(step=7, rollouts_done=1, rollout=rollout)  # not a sampling step
    assert samples.rows() == []
    samples.take(step=8, rollouts_done=2, rollout=rollout)
    rows = samples.rows()
    # masked means: (1+3)/2 = 2; (3+3+6)/3 = 4; -2/1 = -2; (0.5+1.5)/2 = 1
    assert [r["advantage"] for r in rows] == [2.0, 4.0, -2.0, 1.0]
    assert [r["completion"] for r in rows] == list("uvwx") and {r["step"] for r in rows} == {8}
    assert [r["rewards"]["s"] for r in rows] == [1.0, None, 0.5, 0.5]  # NaN: the scorer said "not applicable"
