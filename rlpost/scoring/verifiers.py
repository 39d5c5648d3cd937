r"""Rule-based answer verifiers, as scorers in TRL's reward-function convention.

A scorer is any callable ``f(prompts, completions, **columns) -> list[float | None]``
returning one value per completion (``None`` = not applicable). ``completions`` are
strings, or for conversational data message lists such as
``[{"role": "assistant", "content": "..."}]``, of which the last assistant message
counts. ``columns`` are the task's extra dataset columns, each a list aligned with
``completions`` (e.g. ``answer=[...]``); any other keyword is accepted and ignored.

The module has three layers, each usable alone:

- extraction: :func:`extract_boxed`, :func:`extract_hash_answer`, :func:`extract_last_number`
  pull an answer string out of free text;
- parsing: :func:`parse_number` turns one answer string into a float;
- scorers: :class:`ExactMatchScorer`, :class:`NumericMatchScorer` (and its presets
  :class:`BoxedAnswerScorer`, :class:`HashAnswerScorer`), :class:`FormatScorer`,
  :class:`MathVerifyScorer`.

This module imports nothing from rlpost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

Completion = str | Sequence[Mapping[str, Any]]
ExtractMode = Literal["last", "boxed", "hash", "auto"]

# --------------------------------------------------------------------------- numbers

# One plain number: optional sign, digits with optional 3-digit comma groups, optional
# decimals; or a bare decimal such as ".5".
_PLAIN = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_UNSIGNED = _PLAIN.removeprefix("[-+]?")
_PLAIN_RE = re.compile(_PLAIN)
_SLASH_RE = re.compile(rf"({_PLAIN})\s*/\s*({_PLAIN})")
_FRAC_RE = re.compile(rf"([-+]?)\s*\\[dt]?frac\s*\{{\s*({_PLAIN})\s*\}}\s*\{{\s*({_PLAIN})\s*\}}")
# Numbers inside free text. The look-behind keeps "3-4" from yielding "-4" and
# "x2" from yielding "2"; \frac comes first so "\frac{1}{2}" is one number, not "2".
_NUMBER_IN_TEXT_RE = re.compile(
    rf"(?<![\w.])(?:[-+]?\\[dt]?frac\{{{_PLAIN}\}}\{{{_PLAIN}\}}"
    rf"|[-+]?{_UNSIGNED}(?:\s*/\s*{_UNSIGNED})?)(?!\d|,\d)"
)


def _plain_to_float(text: str) -> float:
    return float(text.replace(",", ""))


def _ratio(numerator: str, denominator: str) -> float | None:
    den = _plain_to_float(denominator)
    return None if den == 0 else _plain_to_float(numerator) / den


def parse_number(text: str) -> float | None:
    r"""Parse one number written the way models and datasets write it.

    Accepts thousands commas, signs, decimals, ``a/b`` fractions, ``\frac``,
    ``\dfrac`` and ``\tfrac`` with a sign in front, surrounding ``$`` (or ``\$``)
    and whitespace, and one trailing period. Anything else, including extra words,
    gives ``None``; so does a zero denominator.

    >>> parse_number("1,234"), parse_number("-3"), parse_number("+3"), parse_number(".5")
    (1234.0, -3.0, 3.0, 0.5)
    >>> parse_number(r"\dfrac{3}{4}"), parse_number(r"-\frac{1}{2}"), parse_number("1/2")
    (0.75, -0.5, 0.5)
    >>> parse_number(" $42$. "), parse_number("42 apples"), parse_number("1,23")
    (42.0, None, None)
    """
    s = text.strip().removeprefix("\\$").removeprefix("$").lstrip()
    s = s[:-2] if s.endswith("$.") else s.removesuffix("$")
    s = s.rstrip().removesuffix(".").rstrip()
    if m := _PLAIN_RE.fullmatch(s):
        return _plain_to_float(m.group())
    if m := _SLASH_RE.fullmatch(s):
        return _ratio(m.group(1), m.group(2))
    if m := _FRAC_RE.fullmatch(s):
        value = _ratio(m.group(2), m.group(3))
        return None if value is None else (-value if m.group(1) == "-" else value)
    return None


# --------------------------------------------------------------------------- extraction

_BOXED_RE = re.compile(r"\\boxed\s*\{")


def extract_boxed(text: str) -> str | None:
    r"""Contents of the last ``\boxed{...}``, braces balanced, stripped.

    ``None`` when there is no ``\boxed{`` or the last one is never closed.

    >>> extract_boxed(r"so \boxed{2} no, \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_boxed("no box") is None, extract_boxed(r"\boxed{\frac{1}{2}") is None
    (True, True)
    """
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None


def extract_hash_answer(text: str) -> str | None:
    """Text after the last ``####`` up to the end of that line, stripped (GSM8K).

    ``None`` when there is no ``####`` or nothing follows it on its line.

    >>> extract_hash_answer("48/2 = 24 clips.\\n#### 1,234\\nThanks")
    '1,234'
    >>> extract_hash_answer("#### ") is None, extract_hash_answer("42") is None
    (True, True)
    """
    idx = text.rfind("####")
    if idx < 0:
        return None
    answer = text[idx + 4 :].split("\n", 1)[0].strip()
    return answer or None


def extract_last_number(text: str) -> str | None:
    r"""The last number in free text, as written (commas, sign, decimals, ``a/b``, ``\frac``).

    A ``-`` counts as a sign only when it does not follow a word character, so
    ``"5-3=2"`` ends in ``"2"`` and ``"3-4"`` in ``"4"``.

    >>> extract_last_number("3 apples + 4 = 7 apples, i.e. -1,234.5 in total.")
    '-1,234.5'
    >>> extract_last_number("half is 1/2"), extract_last_number(r"so $-\frac{1}{2}$")
    ('1/2', '-\\frac{1}{2}')
    >>> extract_last_number("no digits") is None
    True
    """
    matches = _NUMBER_IN_TEXT_RE.findall(text)
    return matches[-1] if matches else None


_EXTRACTORS = {"last": extract_last_number, "boxed": extract_boxed, "hash": extract_hash_answer}


def extract_answer(text: str, extract: ExtractMode) -> str | None:
    r"""Extract the answer string by one rule; ``"auto"`` tries boxed, then ``####``, then last number.

    >>> extract_answer(r"1 then \boxed{2} then 3", "auto"), extract_answer("1 then 3", "auto")
    ('2', '3')
    """
    _check_extract(extract)
    if extract != "auto":
        return _EXTRACTORS[extract](text)
    for rule in ("boxed", "hash", "last"):
        if (answer := _EXTRACTORS[rule](text)) is not None:
            return answer
    return None


def _check_extract(extract: str) -> None:
    allowed = get_args(ExtractMode)
    if extract not in allowed:
        raise ValueError(f"extract={extract!r} is not one of {list(allowed)}")


# --------------------------------------------------------------------------- inputs


def completion_text(completion: Completion) -> str:
    """The text of one completion: the string itself, or the last assistant message's content.

    >>> completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    'a'
    """
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content")
            if not isinstance(content, str):
                raise TypeError(f"assistant message content must be str, got {type(content).__name__}")
            return content
    roles = [message.get("role") for message in completion]
    raise ValueError(f"conversational completion has no assistant message (roles: {roles})")


def get_column(columns: Mapping[str, Any], name: str, num_completions: int) -> Sequence[Any]:
    """The column ``name``, checked to be present and aligned with the completions.

    >>> get_column({"answer": ["1", "2"]}, "answer", 2)
    ['1', '2']
    """
    if name not in columns:
        raise ValueError(f"scorer needs column {name!r}, but the columns given were {sorted(columns)}")
    values = columns[name]
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise ValueError(f"column {name!r} must be a list aligned with completions, got {type(values).__name__}")
    if len(values) != num_completions:
        raise ValueError(f"column {name!r} has {len(values)} values for {num_completions} completions")
    return values


# --------------------------------------------------------------------------- scorers


class ReferenceScorer:
    """Base of scorers that compare each completion with its reference in one column.

    Subclasses implement :meth:`score`. ``name`` (also exposed as ``__name__``,
    which TRL uses) labels the scorer's metrics.
    """

    def __init__(self, column: str, name: str) -> None:
        self.column = column
        self.name = self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Completion], **columns: Any) -> list[float | None]:
        references = get_column(columns, self.column, len(completions))
        return [self.score(completion_text(c), ref) for c, ref in zip(completions, references)]

    def score(self, completion: str, reference: Any) -> float | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(column={self.column!r}, name={self.name!r})"


class ExactMatchScorer(ReferenceScorer):
    """1.0 when the stripped completion equals the stripped reference string, else 0.0.

    >>> ExactMatchScorer()(["q", "q"], [" Paris\\n", "paris"], answer=["Paris", "Paris"])
    [1.0, 0.0]
    """

    def __init__(self, column: str = "answer", name: str = "exact_match") -> None:
        super().__init__(column, name)

    def score(self, completion: str, reference: Any) -> float:
        return float(completion.strip() == str(reference).strip())


def reference_number(reference: Any) -> float:
    """The reference answer as a float: a number, a numeric string, or a GSM8K solution ending in ``####``.

    Raises ``ValueError`` when it is none of these: a bad reference is a data error.

    >>> reference_number("48/2 = 24\\n#### 1,234"), reference_number(7), reference_number("0.5")
    (1234.0, 7.0, 0.5)
    """
    if isinstance(reference, int | float) and not isinstance(reference, bool):
        return float(reference)
    if not isinstance(reference, str):
        raise ValueError(f"reference answer must be a str or number, got {type(reference).__name__}: {reference!r}")
    text = extract_hash_answer(reference) if "####" in reference else reference
    value = None if text is None else parse_number(text)
    if value is None:
        raise ValueError(f"reference answer {reference!r} is not a number")
    return value


class NumericMatchScorer(ReferenceScorer):
    r"""1.0 when the number extracted from the completion equals the reference within tolerance.

        correct = |pred - ref| <= max(rel_tol * max(|pred|, |ref|), abs_tol)   (math.isclose)

    A completion with no extractable or parseable answer scores 0.0. The reference
    column may hold numbers, numeric strings or whole GSM8K solutions (the text
    after ``####`` is used); a reference that is not a number raises ``ValueError``.

    Args:
        column: dataset column holding the reference answer.
        extract: where the answer sits in the completion: ``"last"`` number,
            last ``\boxed{}``, text after the last ``####``, or ``"auto"``
            (boxed, else ``####``, else last number).
        rel_tol: relative tolerance of the comparison.
        abs_tol: absolute tolerance, which matters for references near 0.
        name: metric label.

    >>> s = NumericMatchScorer(extract="boxed")
    >>> s(["q"] * 3, [r"\boxed{\frac{1}{2}}", r"\boxed{0.51}", "0.5"], answer=["0.5"] * 3)
    [1.0, 0.0, 0.0]
    """

    def __init__(
        self,
        column: str = "answer",
        extract: ExtractMode = "auto",
        rel_tol: float = 1e-6,
        abs_tol: float = 0.0,
        name: str = "numeric_match",
    ) -> None:
        _check_extract(extract)
        if rel_tol < 0 or abs_tol < 0:
            raise ValueError(f"tolerances must be >= 0, got rel_tol={rel_tol}, abs_tol={abs_tol}")
        super().__init__(column, name)
        self.extract = extract
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def score(self, completion: str, reference: Any) -> float:
        ref = reference_number(reference)
        answer = extract_answer(completion, self.extract)
        pred = None if answer is None else parse_number(answer)
        if pred is None:
            return 0.0
        return float(math.isclose(pred, ref, rel_tol=self.rel_tol, abs_tol=self.abs_tol))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(column={self.column!r}, extract={self.extract!r}, "
            f"rel_tol={self.rel_tol}, abs_tol={self.abs_tol}, name={self.name!r})"
        )


class BoxedAnswerScorer(NumericMatchScorer):
    r""":class:`NumericMatchScorer` reading the last ``\boxed{}`` (MATH-style)."""

    def __init__(self, column: str = "answer", rel_tol: float = 1e-6, abs_tol: float = 0.0, name: str = "boxed_answer") -> None:
        super().__init__(column, "boxed", rel_tol, abs_tol, name)


class HashAnswerScorer(NumericMatchScorer):
    """:class:`NumericMatchScorer` reading the text after the last ``####`` (GSM8K-style)."""

    def __init__(self, column: str = "answer", rel_tol: float = 1e-6, abs_tol: float = 0.0, name: str = "hash_answer") -> None:
        super().__init__(column, "hash", rel_tol, abs_tol, name)


class FormatScorer:
    r"""1.0 when the whole completion matches ``pattern`` (``re.fullmatch``), else 0.0.

    Needs no column. Leading/trailing whitespace is not forgiven: put ``\s*`` in
    the pattern where it is allowed.

    >>> f = FormatScorer(r"<think>.*?</think>\s*<answer>.*?</answer>")
    >>> f(["q", "q"], ["<think>a\nb</think>\n<answer>3</answer>", "<answer>3</answer>"])
    [1.0, 0.0]
    """

    def __init__(self, pattern: str, flags: int = re.DOTALL, name: str = "format") -> None:
        self.pattern = re.compile(pattern, flags)
        self.flags = flags
        self.name = self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Completion], **columns: Any) -> list[float | None]:
        return [float(self.pattern.fullmatch(completion_text(c)) is not None) for c in completions]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pattern={self.pattern.pattern!r}, flags={self.flags!r}, name={self.name!r})"


class MathVerifyScorer(ReferenceScorer):
    """Symbolic equivalence via Hugging Face's ``math-verify`` (``pip install math-verify``).

        correct = math_verify.verify(parse(reference), parse(completion))

    A GSM8K-style reference is cut to the text after ``####`` first. A reference
    that ``math-verify`` cannot parse raises ``ValueError`` (a data error); a
    completion it cannot parse scores 0.0.

    Args:
        column: dataset column holding the reference answer.
        name: metric label.
    """

    def __init__(self, column: str = "answer", name: str = "math_verify") -> None:
        try:
            import math_verify
        except ImportError as err:
            raise ImportError("MathVerifyScorer needs the math-verify package: pip install math-verify") from err
        super().__init__(column, name)
        self._parse = math_verify.parse
        self._verify = math_verify.verify

    def score(self, completion: str, reference: Any) -> float:
        text = str(reference)
        if "####" in text:
            text = extract_hash_answer(text) or ""
        gold = self._parse(text)
        if not gold:
            raise ValueError(f"math-verify could not parse the reference answer {reference!r}")
        pred = self._parse(completion)
        return float(bool(pred) and bool(self._verify(gold, pred)))
