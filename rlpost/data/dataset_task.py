"""A generic task backed by ``datasets``: a Hub dataset or local json/jsonl/parquet/csv files.

The task turns each row into a prompt (a column, or a template over columns; optionally a
conversation, TRL's conversational format) and passes an answer column and any extra columns
through to the scorers. It tokenizes nothing: the rollout does, and renders conversations with the
policy's own chat template (:mod:`rlpost.chat`).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

from datasets import Dataset

from rlpost.data.source import DataSource, check_columns
from rlpost.data.task import TaskDataModule
from rlpost.scoring.verifiers import NumericMatchScorer

def template_fields(template: str) -> list[str]:
    """Column names a ``str.format`` template refers to.

    >>> template_fields("Q: {question}\\nUnits: {unit}. A:")
    ['question', 'unit']
    """
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    for f in fields:
        if not f.isidentifier():
            raise ValueError(f"prompt_template field {{{f}}} is not a plain column name")
    return list(dict.fromkeys(fields))


class DatasetTask(DataSource, TaskDataModule):
    """A task from any ``datasets`` dataset: Hub name or local files, with column mapping.

    Each row becomes ``{"prompt": ..., "answer": ..., <extra columns>}``:

    - ``prompt`` is the row's ``prompt_column``, or ``prompt_template.format(**row)``; with
      ``use_chat_template`` it becomes a conversation, ``[{"role": "system", "content":
      system_prompt}, {"role": "user", "content": text}]`` (system message only with a
      ``system_prompt``). The rollout and the evaluator render it with the policy's chat template
      (generation prompt added), and the scorers receive the conversation itself and conversational
      completions, as TRL's GRPOTrainer passes them. The conversion to text lives there, not here,
      so that the template is always the policy's own and the data stays in TRL's format.
    - ``answer`` is the row's ``answer_column`` (e.g. GSM8K's solution ending in ``#### 72``);
    - the extra ``columns`` are passed through to the scorers, repeated per completion.

    Args:
        path, name, data_files, train_split, val_split, val_fraction, data_seed, test_split: where the data
            comes from (:class:`~rlpost.data.source.DataSource`); ``val_split`` is the held-out split,
            ``test_split`` the split of ``rlpost test`` (None: none).
        prompt_column: column holding the prompt (ignored when ``prompt_template`` is given).
        prompt_template: ``str.format`` template over columns, e.g. ``"Q: {question}\\nA:"``.
        answer_column: column holding the reference answer, exposed to scorers as ``answer``
            (None: the data has no reference; then give ``scorers`` and ``accuracy``).
        columns: extra columns passed through to the scorers (None: every column other than
            the prompt and answer columns; ``[]``: none).
        use_chat_template: make each prompt a conversation (rendered with the policy's chat template).
        system_prompt: system message before the user prompt (chat template only).
        max_prompts, max_val_prompts: keep at most this many rows of each split (None: all);
            ``max_val_prompts`` bounds the test split too.
        accuracy: scorer of held-out accuracy, 1.0 = correct (default: numeric match of the
            answer extracted from the completion, ``\\boxed{}`` else ``####`` else last number).
        prompts_per_step, eval_batch_size, scorers, scorer_weights: see
            :class:`~rlpost.data.task.TaskDataModule`; default scorer: ``accuracy`` as above.
    """

    held_out_size_arg = "max_val_prompts"  # the argument a comparison suite's eval_prompts sets
    test_split_arg = "test_split"

    def __init__(
        self,
        prompt_column: str = "prompt",
        prompt_template: str | None = None,
        answer_column: str | None = "answer",
        columns: list[str] | None = None,
        use_chat_template: bool = False,
        system_prompt: str | None = None,
        max_prompts: int | None = None,
        max_val_prompts: int | None = None,
        accuracy: Callable | None = None,
        prompts_per_step: int = 8,
        eval_batch_size: int = 64,
        scorers: Mapping[str, Callable] | None = None,
        scorer_weights: Mapping[str, float] | None = None,
        **source,
    ):
        super().__init__(prompts_per_step=prompts_per_step, eval_batch_size=eval_batch_size,
                         required_columns=("answer",) if answer_column is not None else (),
                         scorers=scorers, scorer_weights=scorer_weights, **source)
        if system_prompt is not None and not use_chat_template:
            raise ValueError("system_prompt is only used with use_chat_template=True")
        for arg, n in (("max_prompts", max_prompts), ("max_val_prompts", max_val_prompts)):
            if n is not None and n < 1:
                raise ValueError(f"{arg} must be >= 1 or None, got {n}")
        reserved = {"prompt", "answer"} & set(columns or ())
        if reserved:
            raise ValueError(f"columns {sorted(reserved)} are reserved: the prompt and answer are built from "
                             "prompt_column/prompt_template and answer_column")
        if prompt_template is not None:
            template_fields(prompt_template)  # malformed templates fail now, not at setup
        if answer_column is None and (scorers is None or accuracy is None):
            raise ValueError("answer_column=None: give `scorers` and `accuracy`, the defaults compare with the answer")
        self.save_hyperparameters(ignore=["scorers", "accuracy"])
        self.accuracy = accuracy

    # ----------------------------------------------------------------- scoring
    def default_scorers(self) -> dict[str, Callable]:
        return {"accuracy": self.accuracy_scorer()}

    def accuracy_scorer(self) -> Callable:
        return self.accuracy or NumericMatchScorer(column="answer", extract="auto", name="accuracy")

    # ----------------------------------------------------------------- data
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        h = self.hparams
        (train, train_where), (val, val_where), (test, test_where) = self.load_source()
        for ds, where, limit, attr in ((train, train_where, h.max_prompts, "train_dataset"),
                                       (val, val_where, h.max_val_prompts, "val_dataset"),
                                       (test, test_where, h.max_val_prompts, "test_dataset")):
            if ds is None:
                continue
            if len(ds) == 0:
                raise ValueError(f"{where} is empty: no prompts to train or evaluate on")
            if limit is not None:
                ds = ds.select(range(min(limit, len(ds))))
            setattr(self, attr, self.check_dataset(self.to_prompts(ds, where), where))

    def to_prompts(self, dataset: Dataset, where: str) -> Dataset:
        """Rows -> ``{"prompt", "answer", <extra columns>}`` (see the class docstring)."""
        h = self.hparams
        needed = ({f: "prompt_template" for f in template_fields(h.prompt_template)} if h.prompt_template is not None
                  else {h.prompt_column: "prompt_column"})
        if h.answer_column is not None:
            needed[h.answer_column] = "answer_column"
        used = {h.prompt_column if h.prompt_template is None else None, h.answer_column}
        extra = h.columns if h.columns is not None else [
            c for c in dataset.column_names if c not in used and c not in ("prompt", "answer")]
        check_columns(dataset, {**needed, **{c: "columns" for c in extra}}, where)
        system = [] if h.system_prompt is None else [{"role": "system", "content": h.system_prompt}]
        wrap = (lambda text: [*system, {"role": "user", "content": text}]) if h.use_chat_template else (lambda text: text)

        def row_to_prompt(row: dict[str, Any]) -> dict[str, Any]:
            text = h.prompt_template.format(**row) if h.prompt_template is not None else row[h.prompt_column]
            if not isinstance(text, str):
                raise ValueError(f"{where}: prompt must be a string, got {type(text).__name__}: {text!r}")
            out = {"prompt": wrap(text)}
            if h.answer_column is not None:
                out["answer"] = row[h.answer_column]
            out.update({c: row[c] for c in extra})
            return out

        return dataset.map(row_to_prompt, remove_columns=dataset.column_names, keep_in_memory=True,
                           load_from_cache_file=False, desc="DatasetTask prompts")
