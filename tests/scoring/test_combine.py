import math
import re

import pytest
import torch

from rlpost.algorithms import GRPO
from rlpost.data import ArithmeticTask
from rlpost.scoring import ScorerError, ScorerSet
from tests.conftest import ToyTask, make_trainer

# --------------------------------------------------------------------------- TRL-style reward functions
# Written the way TRL's GRPOTrainer docs write them: keyword `completions`, dataset columns by
# name, **kwargs for the rest; nothing rlpost-specific.


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture content inside \boxed{}
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def math_reward_func(prompts, completions, task, **kwargs):
    rewards = []
    for prompt, completion, t in zip(prompts, completions, task):
        if t == "math":
            rewards.append(1.0 if completion.strip() == "4" else 0.0)
        else:
            rewards.append(None)  # not applicable: this function only scores math rows
    return rewards


def const(value):
    def scorer(prompts, completions, **_):
        return [value] * len(completions)

    return scorer


# --------------------------------------------------------------------------- weighted totals


def test_weighted_total_hand_computed():
    a = lambda prompts, completions, **_: [1.0, 0.0, 3.0]
    b = lambda prompts, completions, **_: [0.5, 2.0, -4.0]
    result = ScorerSet({"a": a, "b": b}, weights={"a": 2.0, "b": -0.5})(["p"] * 3, ["x", "y", "z"])
    # total_i = 2 * a_i - 0.5 * b_i: [2 - 0.25, 0 - 1, 6 + 2] = [1.75, -1.0, 8.0]
    torch.testing.assert_close(result.total, torch.tensor([1.75, -1.0, 8.0]), atol=0, rtol=0)
    torch.testing.assert_close(result.per_scorer["a"], torch.tensor([1.0, 0.0, 3.0]), atol=0, rtol=0)
    torch.testing.assert_close(result.per_scorer["b"], torch.tensor([0.5, 2.0, -4.0]), atol=0, rtol=0)


def test_default_weight_is_one_and_a_single_weight_may_be_given():
    s = ScorerSet({"a": const(1.0), "b": const(2.0)}, weights={"b": 3.0})
    assert s.weights == {"a": 1.0, "b": 3.0}
    # 1 * 1.0 + 3 * 2.0 = 7.0
    assert s(["p", "q"], ["x", "y"]).total.tolist() == [7.0, 7.0]


def test_a_zero_weight_keeps_the_scorer_logged_but_out_of_the_total():
    result = ScorerSet({"a": const(5.0), "b": const(1.0)}, weights={"a": 0.0})(["p"], ["x"])
    assert result.total.tolist() == [1.0]
    assert result.per_scorer["a"].tolist() == [5.0]


def test_list_of_scorers_is_named_by_name_then_function_name():
    class Named:
        name = "custom"

        def __call__(self, prompts, completions, **_):
            return [0.0] * len(completions)

    s = ScorerSet([reward_len, Named()])
    assert s.names == ["reward_len", "custom"]


# --------------------------------------------------------------------------- None and columns


def test_none_adds_zero_to_the_total_and_is_left_out_of_the_scorer_mean():
    prompts = ["2+2=", "name a colour", "2+2=", "name a colour"]
    completions = ["4", "red", "5", "blue"]
    task = ["math", "chat", "math", "chat"]
    s = ScorerSet({"math": math_reward_func, "bonus": const(0.25)}, weights={"math": 2.0})
    result = s(prompts, completions, {"task": task})
    # math scores [1, None, 0, None]; total = 2 * [1, 0, 0, 0] + 0.25
    assert result.total.tolist() == [2.25, 0.25, 0.25, 0.25]
    math_scores = result.per_scorer["math"]
    assert math_scores[0] == 1.0 and math_scores[2] == 0.0
    assert torch.isnan(math_scores[1]) and torch.isnan(math_scores[3])
    assert torch.nanmean(math_scores).item() == 0.5  # the logged mean: 2 applicable completions, 1 right


def test_all_none_gives_zero_total_not_nan():
    result = ScorerSet({"na": const(None)})(["p", "q"], ["x", "y"])
    assert result.total.tolist() == [0.0, 0.0]
    assert torch.isnan(result.per_scorer["na"]).all()


def test_columns_reach_scorers_by_keyword():
    seen = {}

    def spy(prompts, completions, answer, source, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, source=source, extra=kwargs)
        return [0.0] * len(completions)

    state = object()
    ScorerSet({"spy": spy})(["p1", "p2"], ["c1", "c2"], {"answer": ["1", "2"], "source": ["a", "b"]},
                            completion_ids=[[3, 1], [4, 4, 1]], trainer_state=state)
    assert seen == {"prompts": ["p1", "p2"], "completions": ["c1", "c2"], "answer": ["1", "2"],
                    "source": ["a", "b"], "extra": {"completion_ids": [[3, 1], [4, 4, 1]], "trainer_state": state}}


def test_columns_named_like_the_scorer_arguments_are_refused():
    with pytest.raises(ValueError, match=r"column\(s\) \['completion_ids'\] clash"):
        ScorerSet({"a": lambda prompts, completions, **_: [0.0]})(["p"], ["c"], {"completion_ids": [[1]]})


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "scorer, match",
    [
        (lambda prompts, completions, **_: 1 / 0,
         r"scorer 'bad' raised ZeroDivisionError: division by zero on a batch of 3 completions; first prompt: 'p0'"),
        (lambda prompts, completions, **_: [0.0, math.nan, 0.0],
         r"scorer 'bad' returned nan for prompt 'p1' and completion 'c1'"),
        (lambda prompts, completions, **_: [0.0, 0.0, math.inf],
         r"scorer 'bad' returned inf for prompt 'p2' and completion 'c2'"),
        (lambda prompts, completions, **_: [0.0, 0.0], r"scorer 'bad' returned 2 values for 3 completions"),
        (lambda prompts, completions, **_: None, r"scorer 'bad' returned None for 3 completions"),
        (lambda prompts, completions, **_: [0.0, "high", 0.0], r"scorer 'bad' returned non-numeric 'high' \(str\) for prompt 'p1'"),
        (lambda prompts, completions, **_: [0.0, "1.0", 0.0],  # accepted before: a numeric string is still a string
         r"scorer 'bad' returned non-numeric '1.0' \(str\) for prompt 'p1' and completion 'c1'"),
        (lambda prompts, completions, **_: [0.0, [1.0], 0.0], r"scorer 'bad' returned non-numeric \[1.0\] \(list\) for prompt 'p1'"),
        (lambda prompts, completions, **_: [0.0, 1j, 0.0], r"scorer 'bad' returned non-numeric 1j \(complex\) for prompt 'p1'"),
        (lambda prompts, completions, **_: "101", r"scorer 'bad' returned None for 3 completions"),
        (reward_func, r"scorer 'bad' raised TypeError: .*ground_truth"),  # a column the task does not have
    ],
    ids=["raises", "nan", "inf", "wrong-count", "none", "non-numeric", "numeric-string", "list", "complex", "a-string",
         "missing-column"],
)
def test_a_failing_scorer_stops_with_its_name_and_culprit(scorer, match):
    s = ScorerSet({"ok": const(1.0), "bad": scorer})
    with pytest.raises(ScorerError, match=match):
        s(["p0", "p1", "p2"], ["c0", "c1", "c2"])


def test_real_numbers_of_every_kind_are_scores_and_bool_counts_as_0_or_1():
    import numpy as np

    values = [True, False, 2, np.float32(0.5), torch.tensor(0.25), None, 3.0]
    result = ScorerSet({"s": lambda prompts, completions, **_: values})(["p"] * 7, ["c"] * 7)
    torch.testing.assert_close(result.per_scorer["s"], torch.tensor([1.0, 0.0, 2.0, 0.5, 0.25, math.nan, 3.0]),
                               equal_nan=True, atol=0, rtol=0)
    assert result.total.tolist() == [1.0, 0.0, 2.0, 0.5, 0.25, 0.0, 3.0]  # None adds 0


@pytest.mark.parametrize("scorer, weight, culprit", [
    (lambda prompts, completions, **_: [0.0, 1e39, 0.0], 1.0, r"big=inf x weight 1"),  # finite in Python, inf in float32
    (lambda prompts, completions, **_: [0.0, 1e30, 0.0], 1e10, r"big=1e\+30 x weight 1e\+10"),  # the weighting overflows
])
def test_a_reward_that_overflows_after_weighting_stops_naming_the_row(scorer, weight, culprit):
    s = ScorerSet({"ok": const(1.0), "big": scorer}, {"big": weight})
    with pytest.raises(ScorerError, match=r"non-finite reward after weighting \(float32\) for 1 of 3 completions; "
                                          r"prompt 'p1' and completion 'c1': total inf from ok=1 x weight 1, " + culprit):
        s(["p0", "p1", "p2"], ["c0", "c1", "c2"])


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, "1.0"])
def test_non_finite_or_non_numeric_weights_are_refused_naming_the_scorer(weight):
    with pytest.raises(ValueError, match=rf"scorer_weights\['a'\] must be a finite number, got {re.escape(repr(weight))}"):
        ScorerSet({"a": const(1.0)}, {"a": weight})
    with pytest.raises(ValueError, match=r"scorer_weights\['accuracy'\] must be a finite number"):  # at construction,
        ArithmeticTask(num_prompts=8, num_val_prompts=2, scorer_weights={"accuracy": weight})  # default scorers too


def test_the_original_exception_is_chained():
    def broken(prompts, completions, **_):
        raise KeyError("oops")

    with pytest.raises(ScorerError) as info:
        ScorerSet({"broken": broken})(["p"], ["c"])
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    "scorers, weights, match",
    [
        ({}, None, "at least one scorer"),
        ({"a": "not a function"}, None, "scorer 'a' is not callable"),
        ({"a": const(1.0)}, {"b": 1.0}, r"weights given for unknown scorers \['b'\]; scorers are \['a'\]"),
        ([reward_len, reward_len], None, "two scorers are both named 'reward_len'"),
    ],
    ids=["empty", "not-callable", "unknown-weight", "duplicate-name"],
)
def test_bad_scorer_sets_are_refused(scorers, weights, match):
    with pytest.raises(ValueError, match=match):
        ScorerSet(scorers, weights)


def test_misaligned_inputs_are_refused():
    s = ScorerSet({"a": const(1.0)})
    with pytest.raises(ValueError, match="2 prompts for 3 completions"):
        s(["p", "q"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        s(["p", "q"], ["x", "y"], {"answer": ["1"]})


def test_a_task_refuses_bad_configured_scorers_at_construction():
    with pytest.raises(ValueError, match=r"weights given for unknown scorers \['typo'\]"):
        ArithmeticTask(num_prompts=8, num_val_prompts=2, scorers={"len": reward_len}, scorer_weights={"typo": 1.0})
    with pytest.raises(ValueError, match="at least one scorer"):
        ArithmeticTask(num_prompts=8, num_val_prompts=2, scorers={})


# --------------------------------------------------------------------------- TRL functions, unchanged


def test_trl_style_functions_run_unchanged_in_a_scorer_set():
    completions = [r"so \boxed{4}", r"\boxed{5}", "4"]
    s = ScorerSet([reward_len, reward_func], weights={"reward_len": 0.1})
    result = s(["2+2="] * 3, completions, {"ground_truth": ["4", "4", "4"]})
    # reward_len: -|20 - len|: lengths 12, 9, 1 -> -8, -11, -19; reward_func: boxed == "4" -> 1, 0, 0
    assert result.per_scorer["reward_len"].tolist() == [-8.0, -11.0, -19.0]
    assert result.per_scorer["reward_func"].tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(result.total, torch.tensor([0.2, -1.1, -1.9]), atol=1e-6, rtol=0)


def test_trls_own_reward_function_runs_unchanged_on_conversational_completions():
    from trl.rewards import think_format_reward

    completions = [[{"role": "assistant", "content": "<think>\nreasoning\n</think>\n4"}],
                   [{"role": "assistant", "content": "4"}]]
    result = ScorerSet([think_format_reward])([[{"role": "user", "content": "2+2?"}]] * 2, completions)
    assert result.per_scorer["think_format_reward"].tolist() == [1.0, 0.0]


def accuracy_reward(completions, answer, **kwargs):
    return [1.0 if completion.strip() == a else 0.0 for completion, a in zip(completions, answer)]


def test_trl_style_functions_train_a_short_grpo_fit(tmp_path):
    task = ArithmeticTask(num_prompts=16, num_val_prompts=4, max_operand=9, prompts_per_step=2,
                          scorers={"reward_len": reward_len, "accuracy": accuracy_reward},
                          scorer_weights={"reward_len": 0.5})
    model = GRPO(model_name_or_path="builtin:arith-sft", num_generations=4, max_completion_length=4, beta=0.0,
                 save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4))
    make_trainer(tmp_path, max_steps=2).fit(model, datamodule=task)
    assert len(model.history) == 2
    for h in model.history:
        # completions are at most 4 characters, so -|20 - len| lies in [-20, -16]
        assert -20.0 <= h["train/rewards/reward_len/mean"] <= -16.0
        assert 0.0 <= h["train/rewards/accuracy/mean"] <= 1.0
        expected = 0.5 * h["train/rewards/reward_len/mean"] + h["train/rewards/accuracy/mean"]
        assert h["train/reward"] == pytest.approx(expected, abs=1e-5)


def test_a_scorer_failing_mid_run_stops_before_any_update_on_its_scores(tmp_path):
    calls = {"n": 0}

    def flaky(prompts, completions, **_):
        calls["n"] += 1
        # call 1: the scorer dry run; 2: held-out evaluation before training; 3: the first rollout; 4: the second
        return [float("nan") if calls["n"] == 4 and i == 3 else 1.0 for i in range(len(completions))]

    task = ToyTask(scorer=flaky)
    model = GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=3, beta=0.0,
                 save_policy=False)
    trainer = make_trainer(tmp_path, max_steps=4)
    with pytest.raises(ScorerError, match=r"scorer 'toy' returned nan for prompt '.*' and completion '.*'"):
        trainer.fit(model, datamodule=task)
    assert trainer.global_step == 1  # the first rollout's step happened; none on the NaN rollout
