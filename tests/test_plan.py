"""rlpost.plan: the step plan shared by the training loop and the comparison suites."""

import pytest
from datasets import Dataset

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


def test_unknown_tokens_are_warned_naming_the_prompt():
    import warnings

    from rlpost.models import build_byte_tokenizer, build_char_tokenizer
    from rlpost.plan import check_prompt_lengths

    english = "Natalia sold clips to 48 of her friends. How many clips?"
    splits = {"train": Dataset.from_dict({"prompt": ["12+30=", english]})}
    with pytest.warns(UserWarning, match=r"1 of 2 train prompts have more than 10% of their tokens unknown .*Natalia sold"):
        check_prompt_lengths(build_char_tokenizer(), splits, 64, 4)  # digits-only tokenizer: letters are <unk>
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a byte-level tokenizer knows every text; digits alone are known
        check_prompt_lengths(build_byte_tokenizer(), splits, 2048, 4)
        check_prompt_lengths(build_char_tokenizer(), {"val": Dataset.from_dict({"prompt": ["12+30="]})}, 64, 4)
