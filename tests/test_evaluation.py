"""The held-out accuracy scorer is checked like a training scorer: a broken one cannot report a fake accuracy."""

import math

import pytest
import torch
from datasets import Dataset

from rlpost.algorithms import GRPO
from rlpost.evaluation import HeldOutEvaluator
from rlpost.models import build_char_tokenizer, load_policy
from rlpost.scoring import ScorerError, ScorerSet
from tests.conftest import ToyTask, make_trainer

PROMPTS = ["1+2=", "3+4=", "5+6="]


def evaluate(accuracy):
    evaluator = HeldOutEvaluator(accuracy, ScorerSet({"zero": lambda prompts, completions, **_: [0.0] * len(prompts)}),
                                 max_completion_length=3, batch_size=8, temperature=1.0)
    return evaluator(load_policy("builtin:tiny"), build_char_tokenizer(),
                     Dataset.from_dict({"prompt": PROMPTS, "answer": ["3", "7", "11"]}))


def named(values):
    def accuracy(prompts, completions, **_):
        return values

    return accuracy


@pytest.mark.parametrize("values, match", [
    ([1.0, 1.0], r"accuracy scorer 'accuracy' returned 2 values for 3 completions"),  # reported 1.000 before
    ([1.0, math.nan, 1.0], r"accuracy scorer 'accuracy' returned nan for prompt '3\+4='"),  # reported nan before
    ([1.0, "1.0", 1.0], r"accuracy scorer 'accuracy' returned non-numeric '1.0' \(str\) for prompt '3\+4='"),
    ([1.0, None, 1.0], r"accuracy scorer 'accuracy' returned None for prompt '3\+4=' .*accuracy must be a number in \[0, 1\]"),
    ([1.0, 1.0, 5.0], r"accuracy scorer 'accuracy' returned 5 for prompt '5\+6=' .*in \[0, 1\]"),
])
def test_a_broken_accuracy_scorer_is_refused_naming_it_and_the_prompt(values, match):
    with pytest.raises(ScorerError, match=match):
        evaluate(named(values))


def test_a_valid_accuracy_scorer_gives_the_mean():
    result = evaluate(named([1.0, 0.0, True]))  # bool counts 1
    assert result["accuracy_greedy"] == pytest.approx(2 / 3) and result["n"] == 3


def test_a_fit_with_a_broken_accuracy_scorer_fails_before_training(tmp_path):
    class WrongCount(ToyTask):
        def accuracy_scorer(self):
            return named([1.0])

    model = GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=3, beta=0.0,
                 save_policy=False)
    before = {k: v.clone() for k, v in load_policy("builtin:tiny").state_dict().items()}
    with pytest.raises(ScorerError, match=r"accuracy scorer 'accuracy' returned 1 values for 4 completions .*"
                                          r"\(scoring the scorer dry run\)"):
        make_trainer(tmp_path).fit(model, datamodule=WrongCount())
    assert all(torch.equal(before[k], v) for k, v in model.policy.state_dict().items())  # nothing trained
