"""rlpost.plan: the step plan shared by the training loop and the comparison suites."""

import pytest

from rlpost.plan import rollout_plan


def test_rollout_plan_hand_computed():
    # B=4 prompts x G=8 = 32 completions; mini-batches of 8 -> 4 optimizer steps per pass; mu=2 -> 8 per rollout
    p = rollout_plan(4, 8, mini_batch_size=8, micro_batch_size=4, num_iterations=2, max_steps=16)
    assert (p.completions_per_rollout, p.mini_batch_size, p.micro_batch_size, p.optimizer_steps_per_rollout) == (32, 8, 4, 8)
    # defaults: the whole rollout is one mini- and one micro-batch, one step per rollout
    p = rollout_plan(4, 8)
    assert (p.mini_batch_size, p.micro_batch_size, p.optimizer_steps_per_rollout) == (32, 32, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mini_batch_size=5), r"mini_batch_size=5 does not divide the 32 completions per rollout"),
    (dict(mini_batch_size=8, micro_batch_size=3), r"micro_batch_size=3 does not divide mini_batch_size=8"),
    (dict(mini_batch_size=8, max_steps=6), r"max_steps=6 is not a multiple of the 4 optimizer steps per rollout"),
])
def test_rollout_plan_refuses_what_does_not_fit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rollout_plan(4, 8, **kwargs)
