import doctest
import re
import sys
import types

import pytest

import rlpost.scoring.verifiers as verifiers
from rlpost.scoring.verifiers import (
    BoxedAnswerScorer,
    ExactMatchScorer,
    FormatScorer,
    HashAnswerScorer,
    MathVerifyScorer,
    NumericMatchScorer,
    completion_text,
    extract_answer,
    extract_boxed,
    extract_hash_answer,
    extract_last_number,
    parse_number,
)


def test_docstring_examples():
    result = doctest.testmod(verifiers)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- parse_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", 42.0),
        ("1,234", 1234.0),
        ("1,234,567.25", 1234567.25),
        ("-3", -3.0),
        ("+3", 3.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("1/2", 0.5),
        ("-3/4", -0.75),
        (r"\frac{1}{2}", 0.5),
        (r"\dfrac{3}{4}", 0.75),
        (r"\tfrac{1}{4}", 0.25),
        (r"-\frac{1}{2}", -0.5),
        (r"\frac{-1}{2}", -0.5),
        ("  $42$ ", 42.0),
        ("$1,234", 1234.0),
        (r"\$18.90", 18.9),
        ("42.", 42.0),
        ("$42$.", 42.0),
        ("$42.$", 42.0),
    ],
)
def test_parse_number_accepts(text, expected):
    assert parse_number(text) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("text", ["", "abc", "42 apples", "1,23", "1/0", r"\frac{1}{0}", "1..", "$42$..", "--3", "x = 5", "1.2.3"])
def test_parse_number_rejects(text):
    assert parse_number(text) is None


# --------------------------------------------------------------------------- extraction


def test_extract_boxed_last_and_balanced():
    text = r"First \boxed{3}, then corrected: \boxed{\frac{1}{2}} and some trailing words."
    assert extract_boxed(text) == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{ {a}{b} }") == "{a}{b}"
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxed{\frac{1}{2}") is None  # truncated: never closed


def test_extract_hash_answer():
    assert extract_hash_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert extract_hash_answer("#### 1\nwait\n#### 1,234  \nmore text") == "1,234"
    assert extract_hash_answer("no marker 72") is None
    assert extract_hash_answer("ends with ####   ") is None


def test_extract_last_number():
    assert extract_last_number("3 + 4 = 7, and 7 * 2 = 14. So the answer is 14 apples.") == "14"
    assert extract_last_number("The loss was -1,234.5 dollars.") == "-1,234.5"
    assert extract_last_number("5-3=2") == "2"  # a minus after a digit is subtraction, not a sign
    assert extract_last_number("half: 1/2") == "1/2"
    assert extract_last_number(r"so $x = -\frac{1}{2}$") == r"-\frac{1}{2}"
    assert extract_last_number("no numbers") is None


def test_extract_answer_auto_prefers_boxed_then_hash_then_last():
    assert extract_answer(r"7 \boxed{5} 9", "auto") == "5"
    assert extract_answer("7\n#### 5\n9", "auto") == "5"
    assert extract_answer("7 then 9", "auto") == "9"


def test_completion_text_conversational():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"}]
    assert completion_text(msgs) == "a2"
    with pytest.raises(ValueError, match="no assistant message"):
        completion_text([{"role": "user", "content": "q"}])


# --------------------------------------------------------------------------- ExactMatchScorer


def test_exact_match():
    scorer = ExactMatchScorer()
    assert scorer.name == scorer.__name__ == "exact_match"
    out = scorer(["q"] * 3, ["  Paris\n", "paris", "Paris!"], answer=["Paris"] * 3)
    assert out == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- NumericMatchScorer


def test_numeric_last_number_wins_with_trailing_text():
    scorer = NumericMatchScorer(extract="last")
    completions = [
        "She has 3 apples and buys 4 more, so 3 + 4 = 7. The answer is 7 apples!",
        "First I thought 7, but actually it is 8.",
        "7 is wrong; 12.",
    ]
    assert scorer(["q"] * 3, completions, answer=["7", "7", "12"]) == [1.0, 0.0, 1.0]


def test_numeric_boxed_fraction_vs_decimal_reference():
    scorer = NumericMatchScorer(extract="boxed")
    completions = [r"We get \boxed{\frac{1}{2}}.", r"\boxed{\dfrac{1}{3}}", r"The answer is 0.5 (no box)"]
    assert scorer(["q"] * 3, completions, answer=["0.5"] * 3) == [1.0, 0.0, 0.0]


def test_numeric_hash_with_commas_and_gsm8k_reference():
    scorer = NumericMatchScorer(extract="hash")
    gsm8k_solution = "He earns 1,000 + 234 = <<1000+234=1234>>1234 dollars.\n#### 1234"
    completions = ["Adding up.\n#### 1,234", "#### 1,234\n", "#### 1,243", "1234"]
    assert scorer(["q"] * 4, completions, answer=[gsm8k_solution, "1234", "1234", "1234"]) == [1.0, 1.0, 0.0, 0.0]


def test_numeric_negative_and_decimal():
    scorer = NumericMatchScorer(extract="last")
    completions = ["The temperature fell to -3 degrees.", "It is 3.", "Total: 2.50", "Total: 2.5000001", "Total: 2.51"]
    refs = ["-3", "-3", "2.5", "2.5", "2.5"]
    assert scorer(["q"] * 5, completions, answer=refs) == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_numeric_tolerance_is_used():
    completions, refs = ["2.5001"], ["2.5"]
    assert NumericMatchScorer(extract="last")(["q"], completions, answer=refs) == [0.0]
    assert NumericMatchScorer(extract="last", rel_tol=1e-3)(["q"], completions, answer=refs) == [1.0]
    assert NumericMatchScorer(extract="last")(["q"], ["0.0000001"], answer=[0]) == [0.0]
    assert NumericMatchScorer(extract="last", abs_tol=1e-6)(["q"], ["0.0000001"], answer=[0]) == [1.0]


def test_numeric_missing_answer_scores_zero():
    for extract in ("last", "boxed", "hash", "auto"):
        out = NumericMatchScorer(extract=extract)(["q", "q"], ["I don't know.", ""], answer=["5", "5"])
        assert out == [0.0, 0.0], extract
    # present but not a number
    assert NumericMatchScorer(extract="boxed")(["q"], [r"\boxed{x+1}"], answer=["5"]) == [0.0]


def test_numeric_numeric_reference_column():
    assert NumericMatchScorer()(["q", "q"], ["it is 5", "it is 0.25"], answer=[5, 0.25]) == [1.0, 1.0]


def test_numeric_bad_reference_raises():
    with pytest.raises(ValueError, match="'five' is not a number"):
        NumericMatchScorer()(["q"], ["5"], answer=["five"])


def test_numeric_conversational_completions():
    scorer = NumericMatchScorer(extract="auto")
    prompts = [[{"role": "user", "content": "2+3?"}]] * 2
    completions = [
        [{"role": "assistant", "content": r"2+3 = \boxed{5}"}],
        [{"role": "assistant", "content": "It is 6."}],
    ]
    assert scorer(prompts, completions, answer=["5", "5"]) == [1.0, 0.0]


def test_presets():
    boxed, hashed = BoxedAnswerScorer(), HashAnswerScorer()
    assert (boxed.extract, boxed.name) == ("boxed", "boxed_answer")
    assert (hashed.extract, hashed.name) == ("hash", "hash_answer")
    assert boxed(["q"], [r"\boxed{-\frac{1}{2}} then 9"], answer=["-0.5"]) == [1.0]
    assert hashed(["q"], ["#### -7\n"], answer=["-7"]) == [1.0]


def test_bad_extract_value_names_value_and_choices():
    with pytest.raises(ValueError, match=r"extract='bxoed'.*\['last', 'boxed', 'hash', 'auto'\]"):
        NumericMatchScorer(extract="bxoed")


def test_negative_tolerance_rejected():
    with pytest.raises(ValueError, match="rel_tol=-1"):
        NumericMatchScorer(rel_tol=-1)


# --------------------------------------------------------------------------- columns


def test_missing_column_names_column_and_given_columns():
    with pytest.raises(ValueError, match=r"'answer'.*\['other', 'solution'\]"):
        NumericMatchScorer()(["q"], ["5"], solution=["5"], other=[1])


def test_column_length_mismatch():
    with pytest.raises(ValueError, match="2 values for 3 completions"):
        ExactMatchScorer()(["q"] * 3, ["a", "b", "c"], answer=["a", "b"])


def test_custom_column_and_unrelated_kwargs_ignored():
    scorer = NumericMatchScorer(column="solution")
    out = scorer(["q"], ["5"], solution=["5"], answer=["not used"], trainer_state=object(), log_extra=None)
    assert out == [1.0]


# --------------------------------------------------------------------------- FormatScorer


def test_format_scorer():
    scorer = FormatScorer(r"<think>.*?</think>\s*<answer>.*?</answer>")
    completions = [
        "<think>\n3 + 4 = 7\n</think>\n<answer>7</answer>",  # multi-line think: DOTALL
        "<answer>7</answer>",  # no think
        "<think>x</think><answer>7</answer> and then more text",  # trailing text: not a full match
        [{"role": "assistant", "content": "<think>x</think> <answer>7</answer>"}],
    ]
    assert scorer(["q"] * 4, completions, answer=["7"] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert scorer.name == scorer.__name__ == "format"


def test_format_scorer_flags_matter():
    completion = ["<think>a\nb</think><answer>1</answer>"]
    assert FormatScorer(r"<think>.*</think><answer>.*</answer>", flags=0)(["q"], completion) == [0.0]


def test_format_scorer_bad_pattern_fails_at_init():
    with pytest.raises(re.error):
        FormatScorer("<think>(")


# --------------------------------------------------------------------------- MathVerifyScorer


def test_math_verify_missing_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ImportError, match="pip install math-verify"):
        MathVerifyScorer()


def test_math_verify_adapter_with_fake_module(monkeypatch):
    # A stand-in for math_verify: parse -> [number] or [], verify -> equality.
    fake = types.ModuleType("math_verify")
    fake.parse = lambda text: [] if (v := extract_last_number(text)) is None else [parse_number(v)]
    fake.verify = lambda gold, pred: gold == pred
    monkeypatch.setitem(sys.modules, "math_verify", fake)
    scorer = MathVerifyScorer()
    assert scorer.name == "math_verify"
    out = scorer(["q"] * 3, ["so 1/2", "so 3", "nothing"], answer=["0.5", "steps\n#### 2", "1"])
    assert out == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="could not parse the reference"):
        scorer(["q"], ["1"], answer=["no number"])


def test_math_verify_real_package():
    pytest.importorskip("math_verify")
    scorer = MathVerifyScorer()
    assert scorer(["q", "q"], [r"\boxed{\frac{1}{2}}", r"\boxed{3}"], answer=["$0.5$", "$2$"]) == [1.0, 0.0]


# --------------------------------------------------------------------------- TRL-style functions


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def reward_correct(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]


def test_trl_style_reward_functions_accept_rlpost_call():
    kwargs = dict(prompts=["p1", "p2"], completions=["x" * 18, "42"], answer=["no", "42"], other_col=[1, 2])
    assert reward_len(**kwargs) == [-2, -18]
    assert reward_correct(**kwargs) == [0.0, 1.0]
    # rlpost scorers take the very same call
    assert ExactMatchScorer()(**kwargs) == [0.0, 1.0]
    assert FormatScorer(r"\d+")(**kwargs) == [0.0, 1.0]
