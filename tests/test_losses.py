"""Hand-computed checks of rlpost.losses.

Every expected number below is worked out by hand in the comment beside it; none is
produced by calling the code under test or a torch restatement of the same formula.
"""

import math

import pytest
import torch

from rlpost.losses import (
    batch_scaled_group_advantages,
    clipped_surrogate,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    leave_one_out_advantages,
    masked_mean,
    masked_sum,
    masked_var,
    selective_log_softmax,
    seq_mean_token_mean,
    token_mean,
    token_sum_norm,
    whiten,
    zero_signal_groups,
)
from rlpost.sampling_correction import sampling_importance_weights

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(actual, expected, atol=1e-5):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# --------------------------------------------------------------------------- log-probs


def test_selective_log_softmax_hand_computed():
    # Row [0, ln2, ln3]: exp -> [1, 2, 3], sum 6, so log-probs are
    #   ln(1/6) = -1.791759, ln(2/6) = ln(1/3) = -1.098612, ln(3/6) = ln(1/2) = -0.693147.
    # Adding 10 to every logit leaves the softmax unchanged (shift invariance).
    # A uniform row [c, c, c] gives ln(1/3) = -1.098612 for any token.
    # [1000, 1000, -inf] gives ln(1/2) = -0.693147: no overflow (exp(1000) is inf in float32),
    # and the -inf token has p = 0. float32's spacing near 1000 is 6.1e-5, hence atol 1e-4 there.
    logits = torch.tensor(
        [
            [[0.0, LN2, LN3], [10.0, 10.0 + LN2, 10.0 + LN3]],
            [[7.0, 7.0, 7.0], [1000.0, 1000.0, float("-inf")]],
        ]
    )  # [N=2, T=2, V=3]
    index = torch.tensor([[0, 2], [1, 1]])
    out = selective_log_softmax(logits, index)
    assert out.shape == (2, 2)
    close(out[:, :1], [[-1.791759], [-1.098612]])
    close(out[0, 1], -0.693147)
    close(out[1, 1], -0.693147, atol=1e-4)

    # every token of the first position: ln(1/6), ln(1/3), ln(1/2)
    row = logits[:1, :1].expand(3, 1, 3)
    close(selective_log_softmax(row, torch.tensor([[0], [1], [2]])).view(-1), [-1.791759, -1.098612, -0.693147])


def test_selective_log_softmax_half_precision_returns_float32():
    # Same [0, ln2, ln3] row in bfloat16: ln2 and ln3 round to 0.69140625 and 1.09375, so
    # the hand values ln(1/6), ln(1/2) hold only to ~1e-2.
    logits = torch.tensor([[[0.0, LN2, LN3]]], dtype=torch.bfloat16)
    out = selective_log_softmax(logits, torch.tensor([[0]]))
    assert out.dtype == torch.float32
    close(out, [[-1.791759]], atol=1e-2)


def test_entropy_from_logits_hand_computed():
    # Uniform over V=4 (any constant row): H = ln 4 = 1.386294.
    # Two-way [0, ln3]: p = [1/4, 3/4], H = 1/4 ln 4 + 3/4 ln(4/3) = 0.346574 + 0.215762 = 0.562335.
    # Near one-hot [0, -1e4]: p ~ [1, 0], H ~ 0.
    uniform = torch.full((2, 3, 4), 5.0)  # [..., V]
    out = entropy_from_logits(uniform)
    assert out.shape == (2, 3)
    close(out, torch.full((2, 3), 1.386294))
    close(entropy_from_logits(torch.tensor([[0.0, LN3], [0.0, -1e4]])), [0.562335, 0.0])


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_computed():
    # log r = ref - logprob.
    # col 0: logprob ln(1/2), ref ln(1/4): log r = -ln2, r = 1/2
    #        k1 = ln2 = 0.693147, k2 = ln2^2/2 = 0.240227, k3 = 1/2 + ln2 - 1 = 0.193147
    # col 1: logprob ln(1/4), ref ln(1/2): log r = ln2, r = 2
    #        k1 = -ln2 = -0.693147 (k1 can be negative), k2 = 0.240227, k3 = 2 - ln2 - 1 = 0.306853
    # col 2: logprob 0, ref 1: log r = 1, r = e
    #        k1 = -1, k2 = 1/2, k3 = e - 1 - 1 = 0.718282
    # col 3: equal: every estimator is 0
    logprobs = torch.tensor([math.log(0.5), math.log(0.25), 0.0, -0.3])
    ref = torch.tensor([math.log(0.25), math.log(0.5), 1.0, -0.3])
    close(kl_k1(logprobs, ref), [0.693147, -0.693147, -1.0, 0.0])
    close(kl_k2(logprobs, ref), [0.240227, 0.240227, 0.5, 0.0])
    close(kl_k3(logprobs, ref), [0.193147, 0.306853, 0.718282, 0.0])


def test_kl_k3_is_nonnegative_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    logprobs = 4.0 * torch.randn(64, 32, generator=g)
    ref = 4.0 * torch.randn(64, 32, generator=g)
    k3 = kl_k3(logprobs, ref)
    assert torch.isfinite(k3).all()
    assert (k3 >= 0).all()
    assert (kl_k2(logprobs, ref) >= 0).all()
    assert (kl_k1(logprobs, ref) < 0).any()  # k1 alone is not a per-sample bound


def test_kl_k1_k3_are_unbiased_exact_expectation():
    # pi = [1/2, 1/4, 1/4], ref = [1/4, 1/2, 1/4]; exact expectation over x ~ pi.
    # KL(pi || ref) = 1/2 ln2 + 1/4 ln(1/2) + 0 = 1/4 ln2 = 0.173287.
    # E[k3] = 1/2 (1/2 + ln2 - 1) + 1/4 (2 - ln2 - 1) + 0 = 0.096574 + 0.076713 = 0.173287.
    pi = torch.tensor([0.5, 0.25, 0.25])
    ref = torch.tensor([0.25, 0.5, 0.25])
    e_k1 = (pi * kl_k1(pi.log(), ref.log())).sum()
    e_k3 = (pi * kl_k3(pi.log(), ref.log())).sum()
    close(e_k1, 0.173287)
    close(e_k3, 0.173287)


# --------------------------------------------------------------------------- policy loss


def _logratios(ratios):
    return torch.tensor(ratios).log()


def test_clipped_surrogate_hand_computed_symmetric():
    # eps = 0.2 -> clip range [0.8, 1.2]; old_logprobs = 0, so ratio = exp(logprobs).
    # Row 0, A = +1 (given as [N], broadcast over tokens):
    #   1.5:  min(1.5, 1.2) = 1.2   -> loss -1.2, clipped_high
    #   1.25: min(1.25, 1.2) = 1.2  -> loss -1.2, clipped_high
    #   1.1:  inside the range      -> loss -1.1
    #   0.5:  min(0.5, 0.8) = 0.5   -> loss -0.5, the unclipped term wins (not clipped)
    # Row 1, A = -2:
    #   0.5: min(-1.0, 0.8*-2 = -1.6) = -1.6 -> loss 1.6, clipped_low
    #   0.9: inside                          -> loss 1.8
    #   1.5: min(-3.0, 1.2*-2 = -2.4) = -3.0 -> loss 3.0, unclipped term wins (not clipped)
    #   1.0:                                 -> loss 2.0
    logprobs = _logratios([[1.5, 1.25, 1.1, 0.5], [0.5, 0.9, 1.5, 1.0]])
    old = torch.zeros(2, 4)
    out = clipped_surrogate(logprobs, old, torch.tensor([1.0, -2.0]), epsilon=0.2)
    close(out.ratio, [[1.5, 1.25, 1.1, 0.5], [0.5, 0.9, 1.5, 1.0]])
    close(out.loss, [[-1.2, -1.2, -1.1, -0.5], [1.6, 1.8, 3.0, 2.0]])
    assert out.clipped_high.tolist() == [[True, True, False, False], [False, False, False, False]]
    assert out.clipped_low.tolist() == [[False, False, False, False], [True, False, False, False]]


def test_clipped_surrogate_asymmetric_epsilon_high():
    # eps_low = 0.2, eps_high = 0.28 (DAPO clip-higher) -> clip range [0.8, 1.28].
    # Row 0, A = +1: 1.5 -> 1.28 (loss -1.28, clipped_high); 1.25 now inside -> loss -1.25;
    #   1.1 -> -1.1; 0.5 -> -0.5.
    # Row 1, A = -2: the low side is unchanged: 0.5 -> 0.8*-2 -> loss 1.6 (clipped_low);
    #   0.9 -> 1.8; 1.5 -> min(-3.0, 1.28*-2 = -2.56) = -3.0 -> 3.0; 1.0 -> 2.0.
    logprobs = _logratios([[1.5, 1.25, 1.1, 0.5], [0.5, 0.9, 1.5, 1.0]])
    out = clipped_surrogate(logprobs, torch.zeros(2, 4), torch.tensor([1.0, -2.0]), epsilon=0.2, epsilon_high=0.28)
    close(out.loss, [[-1.28, -1.25, -1.1, -0.5], [1.6, 1.8, 3.0, 2.0]])
    assert out.clipped_high.tolist() == [[True, False, False, False], [False, False, False, False]]
    assert out.clipped_low.tolist() == [[False, False, False, False], [True, False, False, False]]


def test_clipped_surrogate_per_token_advantages_and_unclipped_case():
    # [N, T] advantages. old_logprobs = ln 2 and logprobs = ln 2.2 -> ratio 1.1 (the ratio
    # uses the difference only). With eps = 0.2 nothing is clipped, so loss = -1.1 * A:
    #   A = [[3, -1], [0, 0.5]] -> [[-3.3, 1.1], [0, -0.55]].
    logprobs = torch.full((2, 2), math.log(2.2))
    old = torch.full((2, 2), math.log(2.0))
    out = clipped_surrogate(logprobs, old, torch.tensor([[3.0, -1.0], [0.0, 0.5]]))
    close(out.ratio, torch.full((2, 2), 1.1))
    close(out.loss, [[-3.3, 1.1], [0.0, -0.55]])
    assert not out.clipped_low.any() and not out.clipped_high.any()


def test_clipped_surrogate_gradient_is_zero_where_clipped():
    # d loss / d logprob = -A * ratio where the unclipped term is chosen, 0 where clipped.
    # Row 0 (A=+1) ratios [1.5, 1.1, 0.5]: [0 (clipped), -1.1, -0.5].
    # Row 1 (A=-2) ratios [0.5, 0.9, 1.5]: [0 (clipped), 1.8, 3.0].
    logprobs = _logratios([[1.5, 1.1, 0.5], [0.5, 0.9, 1.5]]).requires_grad_()
    out = clipped_surrogate(logprobs, torch.zeros(2, 3), torch.tensor([1.0, -2.0]))
    out.loss.sum().backward()
    close(logprobs.grad, [[0.0, -1.1, -0.5], [0.0, 1.8, 3.0]])


# --------------------------------------------------------------------------- sampler importance weights
# Two completions, T = 3; row 1's last token is padding. log pi_old - log pi_sampler per token:
#   row 0: [ln 2, ln 2, -ln 4]   row 1: [ln 4, NaN (the sampler had none), <masked>]
IS_OLD = torch.tensor([[math.log(2.0), math.log(2.0), -math.log(4.0)], [math.log(4.0), 0.0, 5.0]])
IS_SAMPLER = torch.tensor([[0.0, 0.0, 0.0], [0.0, float("nan"), 0.0]])
IS_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize("sequence_level, truncate, clip_min, clip_max, expected", [
    # token level: ratios [[2, 2, 1/4], [4, 1 (NaN -> d = 0), 1 (masked -> d = 0)]]
    (False, True, None, 3.0, [[2.0, 2.0, 0.25], [3.0, 1.0, 1.0]]),          # clipped above at 3
    (False, True, 0.5, 3.0, [[2.0, 2.0, 0.5], [3.0, 1.0, 1.0]]),            # and below at 0.5
    (False, False, 0.5, 3.0, [[2.0, 2.0, 0.0], [0.0, 1.0, 1.0]]),           # outside [0.5, 3] -> 0
    # sequence level: row 0 exp(ln2 + ln2 - ln4) = 1; row 1 exp(ln 4) = 4
    (True, True, None, 3.0, [[1.0], [3.0]]),
    (True, False, None, 3.0, [[1.0], [0.0]]),
    (True, False, 2.0, None, [[0.0], [4.0]]),                               # only a lower bound
])
def test_sampling_importance_weights_hand_computed(sequence_level, truncate, clip_min, clip_max, expected):
    w = sampling_importance_weights(IS_OLD, IS_SAMPLER, IS_MASK, sequence_level, truncate, clip_min, clip_max)
    close(w, expected)


def test_truncated_importance_weights_need_a_bound():
    with pytest.raises(ValueError, match="needs clip_min or clip_max"):
        sampling_importance_weights(IS_OLD, IS_SAMPLER, IS_MASK, False, True, None, None)


# --------------------------------------------------------------------------- advantages


def test_group_advantages_hand_computed_scaled():
    # G=3. Group [1, 3, 5]: mean 3, deviations [-2, 0, 2], unbiased var (4+0+4)/2 = 4, std 2,
    #   A = [-2, 0, 2] / (2 + 1e-4) = [-0.99995, 0, 0.99995].
    # Group [2, 2, 2]: equal rewards -> exactly 0.
    # G=4. Group [0, 0, 0, 4]: mean 1, deviations [-1, -1, -1, 3], var (1+1+1+9)/3 = 4, std 2,
    #   A = [-1, -1, -1, 3] / 2.0001 = [-0.499975 x3, 1.499925].
    adv = group_advantages(torch.tensor([1.0, 3.0, 5.0, 2.0, 2.0, 2.0]), group_size=3)
    close(adv, [-0.99995, 0.0, 0.99995, 0.0, 0.0, 0.0])
    assert torch.equal(adv[3:], torch.zeros(3))

    adv4 = group_advantages(torch.tensor([0.0, 0.0, 0.0, 4.0, 7.0, 7.0, 7.0, 7.0]), group_size=4)
    close(adv4, [-0.499975, -0.499975, -0.499975, 1.499925, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(adv4[4:], torch.zeros(4))


def test_group_advantages_scale_off_differs():
    # scale=False (Dr. GRPO): only the group mean is subtracted.
    #   [1, 3, 5] -> [-2, 0, 2];  [0, 0, 0, 4] -> [-1, -1, -1, 3]
    # which differ from the scaled values [-0.99995, 0, 0.99995] / [-0.499975, ..., 1.499925].
    rewards = torch.tensor([1.0, 3.0, 5.0, 2.0, 2.0, 2.0])
    off = group_advantages(rewards, group_size=3, scale=False)
    close(off, [-2.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    assert not torch.allclose(off, group_advantages(rewards, group_size=3, scale=True))
    close(group_advantages(torch.tensor([0.0, 0.0, 0.0, 4.0]), 4, scale=False), [-1.0, -1.0, -1.0, 3.0])


def test_group_advantages_equal_rewards_exactly_zero_never_nan():
    # 0.1 is not exact in float32, so mean(r) may differ from r by an ulp and std ~ 1e-9;
    # without the zero-signal mask the quotient would be noise (or NaN with eps=0).
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7])
    for scale in (True, False):
        assert torch.equal(group_advantages(rewards, 3, scale=scale), torch.zeros(6))
    assert torch.equal(group_advantages(rewards, 3, eps=0.0), torch.zeros(6))


def test_group_advantages_bad_groups_raise():
    with pytest.raises(ValueError, match="whole groups of 2"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]), group_size=2)
    with pytest.raises(ValueError, match="whole groups"):
        group_advantages(torch.zeros(2, 4), group_size=4)  # must be flat [B*G]
    with pytest.raises(ValueError, match=r"must be >= 2.*got 1"):
        group_advantages(torch.tensor([1.0, 0.0]), group_size=1)
    with pytest.raises(ValueError, match=r"must be >= 2.*got 0"):
        group_advantages(torch.tensor([1.0, 0.0]), group_size=0)
    with pytest.raises(ValueError, match="whole groups"):
        leave_one_out_advantages(torch.tensor([1.0, 0.0, 1.0]), group_size=2)
    with pytest.raises(ValueError, match="must be >= 2"):
        leave_one_out_advantages(torch.tensor([1.0, 0.0]), group_size=1)


def test_batch_scaled_group_advantages_hand_computed():
    # G=2, rewards [0, 4 | 4, 4].
    # Group-mean baseline: [0-2, 4-2 | 0, 0] = [-2, 2, 0, 0].
    # Batch std: mean 3, deviations [-3, 1, 1, 1], sum sq 12, unbiased var 12/3 = 4, std 2.
    #   A = [-2, 2, 0, 0] / (2 + 1e-4) = [-0.99995, 0.99995, 0, 0].
    # (Per-group scaling would give +-2 / (sqrt(8) + 1e-4) = +-0.707082 instead.)
    rewards = torch.tensor([0.0, 4.0, 4.0, 4.0])
    adv = batch_scaled_group_advantages(rewards, group_size=2)
    close(adv, [-0.99995, 0.99995, 0.0, 0.0])
    assert torch.equal(adv[2:], torch.zeros(2))
    close(group_advantages(rewards, 2), [-0.707082, 0.707082, 0.0, 0.0])


def test_leave_one_out_advantages_hand_computed():
    # G=3, [1, 3, 5]: A_1 = 1 - (3+5)/2 = -3, A_2 = 3 - (1+5)/2 = 0, A_3 = 5 - (1+3)/2 = 3.
    # [2, 2, 2]: exactly 0.
    adv = leave_one_out_advantages(torch.tensor([1.0, 3.0, 5.0, 2.0, 2.0, 2.0]), group_size=3)
    close(adv, [-3.0, 0.0, 3.0, 0.0, 0.0, 0.0])
    assert torch.equal(adv[3:], torch.zeros(3))
    # G=4, [0, 0, 0, 4]: zeros get 0 - (0+0+4)/3 = -1.333333, the 4 gets 4 - 0 = 4.
    close(leave_one_out_advantages(torch.tensor([0.0, 0.0, 0.0, 4.0]), 4), [-1.333333, -1.333333, -1.333333, 4.0])
    assert torch.equal(leave_one_out_advantages(torch.tensor([0.1, 0.1, 0.1]), 3), torch.zeros(3))


def test_zero_signal_groups():
    # groups of 2: [1, 1] equal, [0, 1] not, [2, 2] equal
    assert zero_signal_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2).tolist() == [True, False, True]


# --------------------------------------------------------------------------- masked reductions

X = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 6.0, -50.0, 7.0], [9.0, 9.0, 9.0, 9.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # row 2 fully masked


def test_masked_sum_and_mean_hand_computed():
    # Unmasked entries: 1, 2, 3 | 4, 6 | none.
    # sum all = 16; per row [6, 10, 0]; mean all = 16/5 = 3.2; per row [6/3, 10/2, 0] = [2, 5, 0].
    # per column: sums [5, 8, 3, 0], counts [2, 2, 1, 0 -> 1], means [2.5, 4, 3, 0].
    close(masked_sum(X, M), 16.0)
    close(masked_sum(X, M, dim=-1), [6.0, 10.0, 0.0])
    close(masked_mean(X, M), 3.2)
    close(masked_mean(X, M, dim=-1), [2.0, 5.0, 0.0])  # fully masked row -> 0, not NaN
    close(masked_mean(X, M, dim=0), [2.5, 4.0, 3.0, 0.0])  # fully masked column -> 0
    close(masked_mean(X, M.bool(), dim=-1), [2.0, 5.0, 0.0])  # bool mask works too
    close(masked_mean(X, torch.zeros_like(M)), 0.0)


@pytest.mark.parametrize("pad", [float("nan"), float("inf"), float("-inf"), 1e30])
def test_masked_reductions_ignore_padding_values(pad):
    x = X.masked_fill(M == 0, pad)
    close(masked_sum(x, M), 16.0)
    close(masked_mean(x, M), 3.2)
    close(masked_mean(x, M, dim=-1), [2.0, 5.0, 0.0])
    close(masked_var(x, M), 3.7)  # see test_masked_var_hand_computed


def test_masked_var_hand_computed():
    # entries 1, 2, 3, 4, 6: mean 3.2, deviations [-2.2, -1.2, -0.2, 0.8, 2.8],
    # squares [4.84, 1.44, 0.04, 0.64, 7.84] sum 14.8, unbiased var 14.8 / 4 = 3.7.
    close(masked_var(X, M), 3.7)
    with pytest.raises(ValueError, match="at least 2 unmasked entries, got 1"):
        masked_var(X, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))


def test_whiten_hand_computed():
    # unmasked entries 1, 3, 5: mean 3, unbiased var (4 + 0 + 4)/2 = 4, std 2
    #   -> (x - 3)/2 = [-1, 0, 1]; masked entries come back 0.
    # shift_mean=False adds the mean back: [2, 3, 4], so the mean stays 3 (and the spread is 1).
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, -7.0, 42.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(whiten(x, mask), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    kept = whiten(x, mask, shift_mean=False)
    close(kept, [[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    close(masked_mean(kept, mask), 3.0)
    # finite padding values do not move the statistics
    close(whiten(x.masked_fill(mask == 0, 1e6), mask), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- aggregation
# Three completions of unequal length (4, 1, 2 tokens), max_len 4; pads hold 1000.
#   row 0: [1, 2, 3, 6]  sum 12, len 4, mean 3
#   row 1: [8]           sum 8,  len 1, mean 8
#   row 2: [4, 2]        sum 6,  len 2, mean 3
# seq_mean_token_mean = (3 + 8 + 3)/3 = 14/3 = 4.666667
# token_mean          = (12 + 8 + 6)/7 = 26/7 = 3.714286
# token_sum_norm      = 26 / (3 * 4) = 2.166667
LOSS = torch.tensor([[1.0, 2.0, 3.0, 6.0], [8.0, 1000.0, 1000.0, 1000.0], [4.0, 2.0, 1000.0, 1000.0]])
LMASK = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])


def test_aggregations_hand_computed_unequal_lengths():
    a = seq_mean_token_mean(LOSS, LMASK)
    b = token_mean(LOSS, LMASK)
    c = token_sum_norm(LOSS, LMASK, max_len=4)
    close(a, 14 / 3)
    close(b, 26 / 7)
    close(c, 26 / 12)
    assert len({round(a.item(), 4), round(b.item(), 4), round(c.item(), 4)}) == 3


@pytest.mark.parametrize("pad", [float("nan"), float("inf"), -1e30])
def test_aggregations_ignore_padding(pad):
    loss = LOSS.masked_fill(LMASK == 0, pad)
    close(seq_mean_token_mean(loss, LMASK), 14 / 3)
    close(token_mean(loss, LMASK), 26 / 7)
    close(token_sum_norm(loss, LMASK, max_len=4), 26 / 12)


def test_aggregations_minibatch_split_with_global_counts_sums_to_full_batch():
    # Minibatch A = rows 0, 1; B = row 2; global counts N = 3 seqs, 7 tokens.
    #   seq_mean_token_mean: A (3 + 8)/3 = 11/3, B 3/3 = 1        -> 14/3
    #   token_mean:          A (12 + 8)/7 = 20/7, B 6/7            -> 26/7
    #   token_sum_norm:      A 20/(3*4) = 20/12, B 6/12           -> 26/12
    la, ma, lb, mb = LOSS[:2], LMASK[:2], LOSS[2:], LMASK[2:]
    sa, sb = seq_mean_token_mean(la, ma, num_seqs=3), seq_mean_token_mean(lb, mb, num_seqs=3)
    ta, tb = token_mean(la, ma, num_tokens=7), token_mean(lb, mb, num_tokens=7)
    na, nb = token_sum_norm(la, ma, 4, num_seqs=3), token_sum_norm(lb, mb, 4, num_seqs=3)
    close(sa, 11 / 3), close(sb, 1.0)
    close(ta, 20 / 7), close(tb, 6 / 7)
    close(na, 20 / 12), close(nb, 6 / 12)
    close(sa + sb, seq_mean_token_mean(LOSS, LMASK).item())
    close(ta + tb, token_mean(LOSS, LMASK).item())
    close(na + nb, token_sum_norm(LOSS, LMASK, 4).item())
    # With local counts the pieces do not add up: smtm 11/2 + 3 = 8.5, token_mean 20/5 + 6/2 = 7.
    close(seq_mean_token_mean(la, ma) + seq_mean_token_mean(lb, mb), 8.5)
    close(token_mean(la, ma) + token_mean(lb, mb), 7.0)


def test_aggregations_fully_masked_rows_give_zero_not_nan():
    # row 0 [2, 4] mean 3; row 1 fully masked contributes 0 but still counts in N: (3 + 0)/2 = 1.5.
    loss = torch.tensor([[2.0, 4.0], [float("nan"), float("nan")]])
    mask = torch.tensor([[1, 1], [0, 0]])
    close(seq_mean_token_mean(loss, mask), 1.5)
    close(token_mean(loss, mask), 3.0)  # 6 / 2
    close(token_sum_norm(loss, mask, max_len=2), 1.5)  # 6 / (2 * 2)
    close(token_mean(loss, torch.zeros_like(mask)), 0.0)
    close(seq_mean_token_mean(loss, torch.zeros_like(mask)), 0.0)


# --------------------------------------------------------------------------- PPO critic


def test_gae_hand_computed_two_lengths():
    # gamma = 0.9, lam = 0.5, gamma*lam = 0.45. V past the last real token is 0.
    # Row 0 (3 tokens): r = [0, 0, 1], V = [0.5, 0.6, 0.8]
    #   t=2: delta = 1 + 0.9*0 - 0.8 = 0.2;            A = 0.2
    #   t=1: delta = 0 + 0.9*0.8 - 0.6 = 0.12;         A = 0.12 + 0.45*0.2 = 0.21
    #   t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04;         A = 0.04 + 0.45*0.21 = 0.1345
    #   returns A + V = [0.6345, 0.81, 1.0]
    # Row 1 (2 tokens): r = [0.2, 1], V = [1.0, 0.5]
    #   t=1: delta = 1 + 0 - 0.5 = 0.5;                A = 0.5
    #   t=0: delta = 0.2 + 0.9*0.5 - 1.0 = -0.35;      A = -0.35 + 0.45*0.5 = -0.125
    #   returns [0.875, 1.0]
    # Padding holds big rewards/values that must not leak in.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.2, 1.0, 3.0, 3.0]])
    values = torch.tensor([[0.5, 0.6, 0.8, 7.0], [1.0, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(adv, [[0.1345, 0.21, 0.2, 0.0], [-0.125, 0.5, 0.0, 0.0]])
    close(ret, [[0.6345, 0.81, 1.0, 0.0], [0.875, 1.0, 0.0, 0.0]])
    assert torch.equal(adv[mask == 0], torch.zeros(3)) and torch.equal(ret[mask == 0], torch.zeros(3))

    # Other finite padding gives the same result.
    adv2, ret2 = gae(rewards.masked_fill(mask == 0, -1e6), values.masked_fill(mask == 0, 1e6), mask, 0.9, 0.5)
    close(adv2, adv), close(ret2, ret)


def test_gae_gamma_lam_one_is_monte_carlo_and_lam_matters():
    # gamma = lam = 1: A_t = (sum of rewards from t) - V_t, returns = reward-to-go.
    #   row 0: reward-to-go [1, 1, 1] -> A = [0.5, 0.4, 0.2]
    #   row 1: reward-to-go [1.2, 1.0] -> A = [0.2, 0.5]
    # lam = 0 (gamma 0.9): A = delta = [0.04, 0.12, 0.2] and [-0.35, 0.5] (deltas from above).
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.2, 1.0, 3.0, 3.0]])
    values = torch.tensor([[0.5, 0.6, 0.8, 7.0], [1.0, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.2, 0.0], [0.2, 0.5, 0.0, 0.0]])
    close(ret, [[1.0, 1.0, 1.0, 0.0], [1.2, 1.0, 0.0, 0.0]])
    adv0, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    close(adv0, [[0.04, 0.12, 0.2, 0.0], [-0.35, 0.5, 0.0, 0.0]])


def test_clipped_value_loss_hand_computed():
    # clip c = 0.2; V_clip = V_old + clip(V - V_old, -0.2, 0.2); l = 1/2 max((V-R)^2, (V_clip-R)^2)
    #   V=1.0 V_old=0.9 R=1.5: V_clip = 1.0 (inside)            -> 1/2 * 0.25 = 0.125
    #   V=2.0 V_old=1.0 R=0.0: V_clip = 1.2, max(4, 1.44) = 4    -> 2.0   (unclipped wins)
    #   V=2.0 V_old=1.0 R=3.0: V_clip = 1.2, max(1, 3.24) = 3.24 -> 1.62  (clipped wins)
    #   V=0.0 V_old=1.0 R=-1 : V_clip = 0.8, max(1, 3.24)        -> 1.62  (clipped, low side)
    #   V=0.5 V_old=1.0 R=1.0: V_clip = 0.8, max(0.25, 0.04)     -> 0.125
    values = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.5], requires_grad=True)
    old = torch.tensor([0.9, 1.0, 1.0, 1.0, 1.0])
    returns = torch.tensor([1.5, 0.0, 3.0, -1.0, 1.0])
    loss, clipped = clipped_value_loss(values, old, returns, clip=0.2)
    close(loss, [0.125, 2.0, 1.62, 1.62, 0.125])
    assert clipped.tolist() == [False, False, True, True, False]  # where the clipped term won
    # gradient: V - R where the unclipped term wins, 0 where the clipped (constant) term wins
    loss.sum().backward()
    close(values.grad, [-0.5, 2.0, 0.0, 0.0, -0.5])
    # a wider clip changes the clipped case: c = 1.5 -> V_clip = 2.0, l = 1/2 * 1 = 0.5
    close(clipped_value_loss(values.detach()[2:3], old[2:3], returns[2:3], clip=1.5).loss, [0.5])
