"""Statistics of the global batch from per-rank sums (losses.moment_sums): what GRPO's scale_rewards=batch,
PPO's whitening and REINFORCE++ all-reduce. The 2-process end-to-end check: tests/test_scale_out.py."""

import torch

from rlpost.losses import batch_scaled_group_advantages, mean_var_from_sums, moment_sums, whiten


def test_moment_sums_and_mean_var_hand_computed():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    sums = moment_sums(x, mask)  # the 4 is masked: n = 3, S1 = 1+2+3 = 6, S2 = 1+4+9 = 14
    assert sums.dtype == torch.float64 and sums.tolist() == [3.0, 6.0, 14.0]
    mean, var = mean_var_from_sums(sums)  # mean 2, var = (14 - 3*2^2) / (3-1) = 1
    assert (mean.item(), var.item()) == (2.0, 1.0)
    assert mean_var_from_sums(moment_sums(torch.tensor([5.0]))).var.item() == 0.0  # one entry: 0, not NaN


def test_whitening_each_half_with_the_summed_statistics_equals_whitening_the_whole():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g) * 3 + 1
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    halves = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    sums = sum(moment_sums(h, m) for h, m in halves)  # what an all-reduce over two ranks gives
    joined = torch.cat([whiten(h, m, sums=sums) for h, m in halves])
    torch.testing.assert_close(joined, whiten(x, mask), atol=1e-6, rtol=0)
    local = torch.cat([whiten(h, m) for h, m in halves])  # per-rank statistics: a different result
    assert (local - whiten(x, mask)).abs().max() > 1e-2


def test_batch_scaled_advantages_with_summed_rewards_equal_the_whole_batch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0, 2.0, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 4.0])
    halves = rewards[:8], rewards[8:]
    sums = moment_sums(halves[0]) + moment_sums(halves[1])
    joined = torch.cat([batch_scaled_group_advantages(h, 4, sums=sums) for h in halves])
    whole = batch_scaled_group_advantages(rewards, 4)
    torch.testing.assert_close(joined, whole, atol=1e-6, rtol=0)
    # group 0: mean 0.5, so (1 - 0.5) / (std of all 16 rewards + 1e-4)
    assert abs(whole[0].item() - 0.5 / (rewards.std().item() + 1e-4)) < 1e-6
    local = torch.cat([batch_scaled_group_advantages(h, 4) for h in halves])
    assert (local - whole).abs().max() > 1e-2  # per-rank std differs
