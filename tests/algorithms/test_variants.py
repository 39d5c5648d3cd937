"""Policy-gradient variants: advantages and loss on tiny fixed rollouts, worked out by hand.

The shared rollout (G = 4, one group, T = 2):

    rewards        [1, 0, 0, 1]
    completion_mask [[1, 1], [1, 0], [1, 1], [1, 0]]         |o| = [2, 1, 2, 1], 6 tokens
    ratio pi/pi_old [[1.1, 1.3], [0.7, e^3], [1.0, 0.9], [0.5, e^3]]

The e^3 entries sit on padding: any variant that let them count would be far off.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlpost.algorithms import DAPO, GRPO, GSPO, RLOO, DrGRPO, OnPolicyAlgorithm, ReinforcePlusPlus
from rlpost.algorithms.base import Counts, KLInReward
from rlpost.rollout import Rollout
from tests.conftest import ToyTask, built, make_trainer

RATIO = torch.tensor([[1.1, 1.3], [0.7, math.e**3], [1.0, 0.9], [0.5, math.e**3]])
MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]])
OLD = torch.full((4, 2), -1.0)
LOGPROBS = OLD + RATIO.log()
# GRPO's group-scaled advantage of [1, 0, 0, 1]: mean .5, unbiased std sqrt(1/3) = .57735,
# a = .5 / (.57735 + 1e-4) = .865875
A = 0.5 / (math.sqrt(1 / 3) + 1e-4)


def make(cls, **kw):
    args = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=2, beta=0.0,
                save_policy=False)
    args.update(kw)
    return built(cls(**args))


def hand_rollout(rewards, mask=MASK, old_logprobs=OLD, ref_logprobs=None, group_size=4) -> Rollout:
    n, t = mask.shape
    return Rollout(
        prompt_ids=torch.ones(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
        completion_ids=torch.ones(n, t, dtype=torch.long), completion_mask=mask,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.arange(n // group_size).repeat_interleave(group_size),
        truncated=torch.zeros(n, dtype=torch.bool), prompts=[""] * n, completions=[""] * n,
        old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
    )


def loss_of(model, rollout, logprobs=LOGPROBS):
    """The variant's loss path: advantages -> per-token objective -> aggregation."""
    rollout.advantages = model.compute_advantages(rollout)
    per_token = model.policy_objective(logprobs, rollout).loss
    mask = rollout.completion_mask
    return model.aggregate(per_token, mask, Counts(float(len(rollout)), float(mask.sum())))


# ----------------------------------------------------------------------------- RLOO


def test_rloo_leave_one_out_advantages_and_loss():
    model = make(RLOO)
    rollout = hand_rollout([1.0, 0, 0, 1])
    # A_i = r_i - mean of the other three: 1 - 1/3 = 2/3, 0 - 2/3 = -2/3
    torch.testing.assert_close(model.compute_advantages(rollout), torch.tensor([2, -2, -2, 2]) / 3)
    # an equal-reward group gets exactly 0
    adv = model.compute_advantages(SimpleNamespace(rewards=torch.tensor([1.0, 0, 0, 1, 2, 2, 2, 2])))
    assert torch.equal(adv[4:], torch.zeros(4))
    # per-token -min(rho A, clip(rho, .8, 1.2) A), A = +-2/3:
    #   o1: -1.1(2/3) = -.733333, clip 1.3 -> 1.2: -.8          seq mean -.766667
    #   o2: A<0, rho .7 -> -min(-.466667, -.533333) = .533333   seq mean  .533333
    #   o3: .666667, .9(2/3) = .6                              seq mean  .633333
    #   o4: A>0, rho .5 -> -min(.333333, .533333) = -.333333    seq mean -.333333
    # loss_type grpo: mean of sequence means = .066667 / 4 = .0166667
    torch.testing.assert_close(loss_of(model, rollout), torch.tensor(0.0166667), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- Dr. GRPO


def test_dr_grpo_no_std_scaling_and_constant_length_normaliser():
    model = make(DrGRPO, max_completion_length=4)
    assert (model.hparams.loss_type, model.hparams.scale_rewards) == ("dr_grpo", "none")
    rollout = hand_rollout([1.0, 0, 0, 1])
    # A_i = r_i - mean = +-.5 (no division by the std)
    torch.testing.assert_close(model.compute_advantages(rollout), torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # token losses, A = +-.5: o1 -.55, -.6 (clipped at 1.2); o2 .4; o3 .5, .45; o4 -.25
    # sum = -1.15 + .4 + .95 - .25 = -.05, divided by N * L_max = 4 * 4 (not by the 6 real tokens)
    torch.testing.assert_close(loss_of(model, rollout), torch.tensor(-0.05 / 16), atol=1e-7, rtol=0)


def test_dr_grpo_fixes_loss_type_and_scale_rewards():
    with pytest.raises(TypeError, match="loss_type"):
        make(DrGRPO, loss_type="grpo")


# ----------------------------------------------------------------------------- DAPO


def test_dapo_clip_higher_and_token_mean():
    model = make(DAPO)  # epsilon .2, epsilon_high .28
    assert model.hparams.loss_type == "dapo" and model.reference is None  # beta 0 by default
    rollout = hand_rollout([1.0, 0, 0, 1])
    torch.testing.assert_close(model.compute_advantages(rollout), torch.tensor([A, -A, -A, A]))
    # token losses in units of a = .865875:
    #   o1: -1.1, and 1.3 clipped at 1 + eps_high = 1.28 -> -1.28   (GRPO's 1.2 would give -1.2)
    #   o2: A<0, .7 < .8 -> -min(-.7, -.8) = .8;  o3: 1.0, .9;  o4: -min(.5, .8) = -.5
    # token mean over the 6 real tokens: a (-1.1 - 1.28 + .8 + 1 + .9 - .5) / 6 = -.03 a = -.0259763
    torch.testing.assert_close(loss_of(model, rollout), torch.tensor(-0.03 * A), atol=1e-6, rtol=0)


def test_dapo_overlong_soft_punishment():
    model = make(DAPO, max_completion_length=6, overlong_buffer_len=2, overlong_penalty_factor=0.5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    rollout = model.overlong_punishment(hand_rollout([1.0, 1, 1, 0], mask=mask, old_logprobs=None))
    # lengths 3, 4, 5, 6; L_max - L_cache = 4: min(0, (4 - |o|) / 2) * .5 = 0, 0, -.25, -.5
    torch.testing.assert_close(rollout.scorer_rewards["overlong_penalty"], torch.tensor([0, 0, -0.25, -0.5]))
    torch.testing.assert_close(rollout.rewards, torch.tensor([1, 1, 0.75, -0.5]))
    # the formula past L_max (TRL's soft overlong punishment, which DAPO uses): -1 (times the factor)
    from trl.rewards import get_soft_overlong_punishment

    assert get_soft_overlong_punishment(6, 2)([[0] * 4, [0] * 7, [0] * 9]) == [0.0, -1.0, -1.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(epsilon_high=0.2), r"epsilon_high=0.2 must exceed epsilon=0.2"),
    (dict(overlong_buffer_len=2), r"overlong_buffer_len=2 must be in \[0, max_completion_length=2\)"),
    (dict(max_resample_rounds=-1), r"max_resample_rounds=-1 must be >= 0"),
])
def test_dapo_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(DAPO, **kwargs)


class FakeRollouts:
    """Stands in for the base rollout: G = 2; prompt 's*' gets rewards [1, 0] (signal), 'z*' [1, 1].
    Each call has its own prompt and completion widths, so concatenation must pad."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        n, width = 2 * len(batch["prompt"]), 1 + self.calls
        rewards = [r for p in batch["prompt"] for r in ((1.0, 0.0) if p.startswith("s") else (1.0, 1.0))]
        rollout = hand_rollout(rewards, mask=torch.ones(n, width, dtype=torch.long),
                               old_logprobs=torch.full((n, width), -1.0), group_size=2)
        rollout.prompt_ids = torch.full((n, self.calls), 5)
        rollout.prompt_mask = torch.ones(n, self.calls, dtype=torch.long)
        rollout.prompts = [p for p in batch["prompt"] for _ in range(2)]
        return rollout


@pytest.mark.parametrize("rounds, kept_prompts, extra, zero_kept", [
    # batch [s0 z0 z1] keeps 1; +[z2 s1 z3] keeps 2; +[s2 s3 z4] keeps 4 >= 3: s3 dropped
    (3, ["s0", "s1", "s2"], 6, 0),
    # capped after one extra round: 2 groups with signal, then the first zero-signal group pads
    (1, ["s0", "s1", "z0"], 3, 1),
])
def test_dapo_dynamic_sampling_refills_the_batch(monkeypatch, rounds, kept_prompts, extra, zero_kept):
    model = make(DAPO, num_generations=2, max_resample_rounds=rounds)
    queue = iter(["z2", "s1", "z3", "s2", "s3", "z4"])
    task = SimpleNamespace(sample_prompts=lambda n, generator: {"prompt": [next(queue) for _ in range(n)]})
    monkeypatch.setattr(DAPO, "trainer", property(lambda self: SimpleNamespace(datamodule=task)))
    fake = FakeRollouts()
    monkeypatch.setattr(OnPolicyAlgorithm, "rollout", lambda self, batch: fake(batch))
    out = model.rollout({"prompt": ["s0", "z0", "z1"]})
    assert out.prompts == [p for p in kept_prompts for _ in range(2)]  # B*G = 6 completions, always
    assert out.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert model.step_metrics == {"dynamic_sampling/extra_prompts": extra, "dynamic_sampling/zero_signal_kept": zero_kept}
    # call k has P = k prompt and T = k + 1 completion tokens; the last call sets the padded widths.
    # Row 0 (call 1): prompt left padded, completion (and old log-probs) right padded.
    calls, pad = min(rounds + 1, 3), model.tokenizer.pad_token_id
    assert out.prompt_ids[0].tolist() == [pad] * (calls - 1) + [5]
    assert out.prompt_mask[0].tolist() == [0] * (calls - 1) + [1]
    assert out.completion_ids[0].tolist() == [1, 1] + [pad] * (calls - 1)
    assert out.completion_mask[0].tolist() == [1, 1] + [0] * (calls - 1)
    assert out.old_logprobs[0].tolist() == [-1.0, -1.0] + [0.0] * (calls - 1)


# ----------------------------------------------------------------------------- GSPO


@pytest.mark.parametrize("clip, expected", [
    # s_i = exp(mean log ratio over o_i's real tokens): sqrt(1.1 * 1.3) = 1.195826, .7,
    # sqrt(1 * .9) = .948683, .5. With eps .2 (A in units of a = .865875):
    #   l1 = -1.195826 (inside [.8, 1.2]); l2 = -min(-.7, -.8) = .8; l3 = .948683; l4 = -min(.5, .8) = -.5
    #   L = a (-1.195826 + .8 + .948683 - .5) / 4 = .0114419
    (dict(epsilon=0.2, epsilon_high=0.2), 0.0114419),
    # the paper's (3e-4, 4e-4): l1 = -1.0004 (clipped), l2 = -min(-.7, -.9997) = .9997, l3 = .9997, l4 = -.5
    #   L = a (-1.0004 + .9997 + .9997 - .5) / 4 = .108018
    (dict(), 0.108018),
])
def test_gspo_sequence_level_ratio_and_clip(clip, expected):
    model = make(GSPO, **clip)
    assert model.hparams.loss_type == "grpo"
    rollout = hand_rollout([1.0, 0, 0, 1])
    torch.testing.assert_close(loss_of(model, rollout), torch.tensor(expected), atol=1e-6, rtol=0)
    # one ratio per sequence: every token of o_i carries the same loss
    per_token = model.policy_objective(LOGPROBS, rollout).loss
    assert torch.equal(per_token[:, 0], per_token[:, 1])


def test_gspo_on_policy_ratio_is_one_but_the_gradient_flows():
    """mu = 1: pi_old is the detached current policy. s_i = 1 in value, and
    dL/dlogprob_{i,t} = -A_i / (N |o_i|) (the sequence-mean token score), as in the paper."""
    model = make(GSPO)
    rollout = hand_rollout([1.0, 0, 0, 1], old_logprobs=None)
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss = loss_of(model, rollout, logprobs)
    # every s_i = 1: L = -(1/4) sum_i A_i = 0 here (advantages sum to zero)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-7, rtol=0)
    loss.backward()
    adv = torch.tensor([A, -A, -A, A]).unsqueeze(1)
    expected = -adv / (4 * MASK.sum(dim=1, keepdim=True)) * MASK
    torch.testing.assert_close(logprobs.grad, expected.float(), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_kl_shaped_returns_whitened_over_the_batch():
    model = make(ReinforcePlusPlus, num_generations=2, beta=0.1)
    assert isinstance(model, KLInReward) and model.needs_old_logprobs() and model.kl_penalty(OLD, None) is None
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    old = torch.full((2, 3), -1.0)
    ref = old - torch.tensor([[0.2, -0.1, 0.3], [0.5, 0.0, 9.0]])  # log pi_old - log pi_ref (9: padding)
    rollout = hand_rollout([1.0, 0.0], mask=mask, old_logprobs=old, ref_logprobs=ref, group_size=2)
    # r_t = -.1 * kl_t, score on the last real token:  o1 [-.02, .01, -.03 + 1] ; o2 [-.05, 0 + 0]
    # returns-to-go:                                     o1 [.96, .98, .97]      ; o2 [-.05, 0]
    # whitened over the 5 real tokens: mean .572, unbiased var 1.18948 / 4 = .29737, std .545316
    expected = torch.tensor([[0.711513, 0.748189, 0.729851], [-1.140622, -1.048932, 0.0]])
    adv = model.compute_advantages(rollout)
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    # pi = pi_old (ratio 1): token loss -A_t; grpo: seq means -.729851 and 1.094777 -> mean .182463
    rollout.advantages = adv
    per_token = model.policy_objective(old, rollout).loss
    loss = model.aggregate(per_token, mask, Counts(2.0, 5.0))
    torch.testing.assert_close(loss, torch.tensor(0.182463), atol=1e-5, rtol=0)


def test_reinforce_pp_beta_zero_is_the_whitened_score():
    model = make(ReinforcePlusPlus, num_generations=2)  # beta 0: no reference, r_t = score on the last token
    rollout = hand_rollout([1.0, 0.0], mask=torch.tensor([[1, 1], [1, 0]]), old_logprobs=torch.zeros(2, 2), group_size=2)
    # returns [1, 1], [0]: mean 2/3, unbiased var (2 (1/3)^2 + (2/3)^2) / 2 = 1/3, std .57735
    expected = torch.tensor([[0.57735, 0.57735], [-1.15470, 0.0]])
    torch.testing.assert_close(model.compute_advantages(rollout), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- through the Trainer

VARIANTS = [RLOO, DrGRPO, DAPO, GSPO, ReinforcePlusPlus]


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.__name__)
def test_variant_fits_two_steps_and_logs(tmp_path, cls):
    extra = dict(overlong_buffer_len=1) if cls is DAPO else {}
    model = make(cls, max_completion_length=4, beta=0.04, save_policy=False, **extra)
    make_trainer(tmp_path, max_steps=2).fit(model, datamodule=ToyTask(prompts_per_step=2))
    assert model.summary["algorithm"] == cls.__name__ and model.summary["steps"] == 2
    step = model.history[-1]
    assert all(math.isfinite(v) for v in step.values())
    assert "train/kl" in step
    if cls is DAPO:
        assert "train/dynamic_sampling/extra_prompts" in step and "train/rewards/overlong_penalty/mean" in step


@pytest.mark.slow
@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.__name__)
def test_variant_learns_a_toy_preference_from_scratch(tmp_path, cls):
    """From a random tiny model, rewarding completions that start with '7' raises the reward."""
    torch.manual_seed(0)
    model = make(cls, num_generations=8, max_completion_length=4, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    make_trainer(tmp_path, max_steps=30).fit(model, datamodule=ToyTask(prompts_per_step=4))
    rewards = [h["train/reward"] for h in model.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3 and last > 0.5, (first, last)


def test_variants_are_small_subclasses():
    for cls in VARIANTS:
        assert issubclass(cls, OnPolicyAlgorithm)
    assert issubclass(DrGRPO, GRPO) and issubclass(DAPO, GRPO) and issubclass(GSPO, GRPO)
