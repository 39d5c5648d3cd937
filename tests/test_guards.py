"""Each guard triggers, naming the step and the row responsible (not the mini-batch's first prompt)."""

import re

import pytest
import torch

from rlpost.algorithms import GRPO
from rlpost.generation import Completions, GenerationBackend
from rlpost.guards import DegenerationGuard, max_ngram_count
from rlpost.scoring import ScorerError
from tests.conftest import ToyTask, make_trainer

CULPRIT = 5  # a row of the second prompt's group: never the mini-batch's first row


class Marked(GRPO):
    """GRPO whose rollouts carry each row's index as a column (sliced with the rows), so a test can
    break one row and read back which prompt and completion it was."""

    def __init__(self, **kw):
        super().__init__(**{**dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4,
                                   beta=0.0, save_policy=False), **kw})

    def on_rollout(self, rollout):
        rollout.columns["row"] = list(range(len(rollout)))
        self.culprit = (rollout.prompts[CULPRIT], rollout.completions[CULPRIT])

    def is_culprit(self, mb) -> torch.Tensor:
        return torch.tensor([r == CULPRIT for r in mb.columns["row"]], device=mb.completion_ids.device)


def named_culprit(model, info, why):
    msg = str(info.value)
    prompt, completion = model.culprit
    assert re.search(r"at optimizer step 1 \(rollout 1\)", msg), msg
    assert f"Responsible (1 of the mini-batch's 8 rows): prompt {prompt!r} -> completion {completion!r} ({why})" in msg, msg


def test_non_finite_rewards_stop_naming_the_row(tmp_path):
    class InfReward(Marked):
        def on_rollout(self, rollout):
            super().on_rollout(rollout)
            rollout.rewards[CULPRIT] = float("inf")  # e.g. a reward shaped after scoring

    model = InfReward()
    with pytest.raises(FloatingPointError) as info:
        make_trainer(tmp_path).fit(model, datamodule=ToyTask())
    prompt, completion = model.culprit
    msg = str(info.value)
    # the inf reward makes its whole group's advantages NaN: the 4 rows of that group are named, row 5 for its reward
    assert "at optimizer step 1 (rollout 1)" in msg and "Responsible (4 of the mini-batch's 8 rows)" in msg
    assert f"prompt {prompt!r} -> completion {completion!r} (non-finite rewards, advantages)" in msg
    assert msg.count(f"prompt {prompt!r} -> ") == 4  # rows 4-7 share the prompt; group 0's prompt is not named
    assert model.global_step == 0  # no step was taken


def test_a_scorer_overflowing_float32_stops_at_scoring_naming_the_prompt(tmp_path):
    def huge(prompts, completions, **_):
        return [1e39 if i == 1 else 0.0 for i in range(len(completions))]  # finite in Python, inf in float32

    with pytest.raises(ScorerError, match=r"non-finite reward after weighting \(float32\) for 1 of \d+ completions; "
                                          r"prompt '.*' and completion '.*': total inf from toy=inf x weight 1"):
        make_trainer(tmp_path).fit(Marked(), datamodule=ToyTask(scorer=huge))


def test_non_finite_advantages_stop_naming_the_row(tmp_path):
    class NaNAdvantage(Marked):
        def compute_advantages(self, rollout):
            adv = super().compute_advantages(rollout)
            return torch.where(self.is_culprit(rollout), torch.nan, adv)

    model = NaNAdvantage()
    with pytest.raises(FloatingPointError) as info:
        make_trainer(tmp_path).fit(model, datamodule=ToyTask())
    named_culprit(model, info, "non-finite advantages")


def test_a_non_finite_loss_stops_naming_the_row_not_the_first_prompt(tmp_path):
    class NaNLoss(Marked):
        def policy_objective(self, logprobs, mb):
            out = super().policy_objective(logprobs, mb)
            return out._replace(loss=torch.where(self.is_culprit(mb)[:, None], torch.nan, out.loss))

    model = NaNLoss()
    with pytest.raises(FloatingPointError, match=r"loss nan") as info:
        make_trainer(tmp_path).fit(model, datamodule=ToyTask())
    named_culprit(model, info, "its own loss is non-finite")


def test_a_non_finite_gradient_with_a_finite_loss_stops_naming_the_row(tmp_path):
    class NaNGrad(Marked):
        def policy_scores(self, mb):
            scores = super().policy_scores(mb)
            if scores.logprobs.requires_grad:
                bad = self.is_culprit(mb)[:, None]
                scores.logprobs.register_hook(lambda g: torch.where(bad, torch.nan, g))
            return scores

    model = NaNGrad()
    with pytest.raises(FloatingPointError, match=r"non-finite training values at optimizer step 1 .*: loss -?\d.*, "
                                                 r"gradient norm nan") as info:
        make_trainer(tmp_path).fit(model, datamodule=ToyTask())
    named_culprit(model, info, "its own gradient is non-finite")
    assert "parameters with non-finite gradients: ['policy.model.embed_tokens.weight'" in str(info.value)


def test_entropy_floor_stops_naming_the_step(tmp_path):
    model = Marked(max_entropy_collapse=100.0)  # a floor no policy's entropy reaches
    with pytest.raises(RuntimeError, match=r"entropy collapsed to \d\.\d{4} < max_entropy_collapse=100.0 at step 1; "
                                           r"e.g. prompt '.*' -> '.*'"):
        make_trainer(tmp_path, log_every_n_steps=1).fit(model, datamodule=ToyTask())


def test_rows_flushed_by_a_checkpoint_still_reach_the_entropy_floor(tmp_path):
    """A checkpoint reads the buffered history back before its state is taken (every step here, while the guard
    reads the history every 2 steps): step 1's row reaches the guard at step 2 all the same."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = Marked(max_entropy_collapse=100.0)
    every_step = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = make_trainer(tmp_path, max_steps=4, log_every_n_steps=2, enable_checkpointing=True, callbacks=[every_step])
    with pytest.raises(RuntimeError, match=r"entropy collapsed to .* at step 1;"):
        trainer.fit(model, datamodule=ToyTask())
    assert trainer.global_step == 2


def test_max_ngram_count_hand_computed():
    assert max_ngram_count([7, 7, 7, 7], 2) == 3  # (7,7) at positions 0, 1, 2
    assert max_ngram_count([1, 2, 1, 2, 1], 2) == 2  # (1,2) twice, (2,1) twice
    assert max_ngram_count([1, 2, 3], 4) == 0  # shorter than n


class Repeating(GenerationBackend):
    """The first ``n`` completions repeat the token '7' (id 10); the others are '012345' (ids 3-8)."""

    def __init__(self, n):
        self.n = n

    def generate(self, policy, prompt_ids, prompt_mask, sampling, *, eos_token_id, pad_token_id):
        ids = torch.arange(3, 3 + sampling.max_new_tokens).repeat(len(prompt_ids), 1)
        ids[: self.n] = 10
        return Completions(ids.to(prompt_ids.device))


@pytest.mark.parametrize("degenerate, action", [(6, "stop"), (6, "warn"), (4, "stop")])
def test_degeneration_guard(tmp_path, degenerate, action):
    model = Marked(max_completion_length=6)
    model.backend = Repeating(degenerate)
    guard = DegenerationGuard(ngram=1, max_repeats=3, max_fraction=0.5, action=action)
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[guard])
    match = (r"degenerate output at step 1: 6 of 8 completions repeat one 1-gram more than max_repeats=3 times "
             r"\(max_fraction=0.5\); e.g. prompt '.*' -> '777777' \(an n-gram 6 times\)")
    if degenerate == 4:  # 4 of 8 is not more than half: no action
        trainer.fit(model, datamodule=ToyTask())
    elif action == "stop":
        with pytest.raises(RuntimeError, match=match):
            trainer.fit(model, datamodule=ToyTask())
    else:
        with pytest.warns(UserWarning, match=match):
            trainer.fit(model, datamodule=ToyTask())
    assert trainer.global_step == 1


@pytest.mark.parametrize("kwargs, match", [(dict(ngram=0), "ngram must be > 0, got 0"),
                                           (dict(max_fraction=1.5), r"max_fraction must be in \(0, 1\], got 1.5"),
                                           (dict(action="halt"), "action must be 'stop' or 'warn', got 'halt'")])
def test_degeneration_guard_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DegenerationGuard(**kwargs)
