"""The scorer dry run: every scorer once on a few prompts before the first evaluation, checked and timed."""

import json
import time

import pytest

from rlpost.algorithms import GRPO
from rlpost.scoring import ScorerError, ScorerSet
from tests.conftest import ToyTask, make_trainer


def tiny():
    return GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=3, beta=0.0,
                save_policy=False)


class Scored(ToyTask):
    def __init__(self, scorers):
        super().__init__()
        self._scorers = scorers

    def scorers(self):
        return ScorerSet(self._scorers)


def test_a_scorer_with_the_wrong_signature_is_refused_before_the_first_evaluation(tmp_path):
    calls = []

    def strict(prompts, completions, solution):  # the task's column is `answer`, and no **kwargs
        calls.append(1)
        return [0.0] * len(prompts)

    with pytest.raises(ScorerError, match=r"scorer 'strict' cannot be called as f\(prompts, completions, answer, completion_ids, trainer_state\) .*"
                                          r"missing a required argument: 'solution'; its signature is "
                                          r"\(prompts, completions, solution\)"):
        make_trainer(tmp_path).fit(tiny(), datamodule=Scored({"strict": strict}))
    assert calls == []  # refused before it was ever called


def test_each_scorers_latency_is_reported_in_the_summary(tmp_path, caplog):
    def slow(prompts, completions, **_):
        time.sleep(0.05)
        return [None] * len(prompts)  # "not applicable" everywhere: counted, not an error

    def fast(prompts, completions, **_):
        return [1.0] * len(prompts)

    model = tiny()
    make_trainer(tmp_path, max_steps=1).fit(model, datamodule=Scored({"slow": slow, "fast": fast}))
    report = json.loads(model.summary_path.read_text())["scorer_dry_run"]
    assert list(report) == ["slow", "fast", "held-out accuracy (<lambda>)"]
    assert all(r["completions"] == 4 for r in report.values())  # the first 4 training prompts, greedy
    assert report["slow"]["none"] == 4 and report["fast"]["none"] == 0
    assert report["slow"]["s_per_call"] >= 0.05 > report["fast"]["s_per_call"]
    assert "[rlpost] scorers checked on 4 prompts (greedy completions): slow " in caplog.text
