"""A generic task backed by ``datasets``: a Hub dataset or local json/jsonl/parquet/csv files.

The task turns each row into a prompt string (a column, or a template over columns, optionally
wrapped in the tokenizer's chat template) and passes an answer column and any extra columns
through to the scorers. It tokenizes nothing for training: the rollout does.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset

from rlpost.data.task import TaskDataModule
from rlpost.scoring.verifiers import NumericMatchScorer

DataFiles = str | Sequence[str] | Mapping[str, str | Sequence[str]]
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def builder_for(data_files: DataFiles) -> str:
    """The ``datasets`` builder of local files from their extension (all files must agree).

    >>> builder_for({"train": "a/train.jsonl", "test": ["b.json"]})
    'json'
    """
    files = [f for fs in _split_files(data_files).values() for f in fs]
    kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"cannot tell the format of data_files={data_files!r}: give files that all end in one of "
                         f"{sorted(BUILDERS)}, or name the builder in `path` (e.g. path: json)")
    return kinds.pop()


def _split_files(data_files: DataFiles) -> dict[str, list[str]]:
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, Mapping):
        return {k: [v] if isinstance(v, str) else list(v) for k, v in data_files.items()}
    return {"train": list(data_files)}


def _local_file_is_empty(file: str) -> bool:
    """True when a local file holds no rows (``datasets`` fails on these with unhelpful messages).
    Remote or glob patterns are left to ``datasets``."""
    p = Path(file)
    if not p.is_file():
        return False
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(p).metadata.num_rows == 0
    text = p.read_text(errors="replace").strip()
    if p.suffix.lower() == ".csv":
        return len([line for line in text.splitlines() if line.strip()]) <= 1  # a header alone
    return text in ("", "[]")


def load_splits(
    path: str | None,
    name: str | None,
    data_files: DataFiles | None,
    train_split: str,
    val_split: str | None,
    val_fraction: float | None,
    data_seed: int,
) -> tuple[Dataset, Dataset, str]:
    """Load a train and a validation split with ``datasets.load_dataset``.

    ``path`` is a Hub name (``openai/gsm8k``) or a builder (``json``, ``parquet``, ``csv``);
    with local ``data_files`` alone the builder comes from the file extension. A single file
    or a list of files is the split ``train``; a dict names the splits. The validation split
    is ``val_split``, or a ``val_fraction`` of the train split held out with ``data_seed``.

    Returns:
        (train, val, source) where ``source`` describes where the data came from, for messages.
    """
    if path is None and data_files is None:
        raise ValueError("give `path` (a Hub dataset name or a builder) or local `data_files`")
    if (val_split is None) == (val_fraction is None):
        raise ValueError(f"give exactly one of val_split and val_fraction, got val_split={val_split!r}, "
                         f"val_fraction={val_fraction!r}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    builder = path if path is not None else builder_for(data_files)
    source = path if data_files is None else f"data_files={data_files!r}"
    if data_files is not None:
        for split, files in _split_files(data_files).items():
            if all(_local_file_is_empty(f) for f in files):
                raise ValueError(f"split {split!r} of {source} is empty: its files hold no rows")
    try:
        splits = load_dataset(builder, name, data_files=data_files)
    except Exception as err:  # re-raised with the source named, never swallowed
        raise ValueError(f"could not load {source} (builder {builder!r}, name {name!r}): "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(splits, DatasetDict):
        raise ValueError(f"{source} did not load as named splits (got {type(splits).__name__})")
    for split in (train_split, val_split):
        if split is not None and split not in splits:
            hint = "; name the splits with data_files: {train: ..., test: ...} or set val_fraction" if data_files else ""
            raise ValueError(f"split {split!r} not found in {source}; available splits: {sorted(splits)}{hint}")
    train = splits[train_split]
    if val_split is not None:
        return train, splits[val_split], source
    if len(train) < 2:
        raise ValueError(f"split {train_split!r} of {source} has {len(train)} rows: too few to hold out val_fraction")
    parts = train.train_test_split(test_size=val_fraction, seed=data_seed)
    return parts["train"], parts["test"], source


def check_columns(dataset: Dataset, needed: Mapping[str, str], where: str) -> None:
    """Raise naming each missing column and the argument that asked for it.

    Args:
        needed: column -> the argument that names it (e.g. ``{"question": "prompt_column"}``).
    """
    missing = [f"{col!r} ({arg})" for col, arg in needed.items() if col not in dataset.column_names]
    if missing:
        raise ValueError(f"{where} has no column {', '.join(missing)}; its columns are {dataset.column_names}")


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


class DatasetTask(TaskDataModule):
    """A task from any ``datasets`` dataset: Hub name or local files, with column mapping.

    Each row becomes ``{"prompt": ..., "answer": ..., <extra columns>}``:

    - ``prompt`` is the row's ``prompt_column``, or ``prompt_template.format(**row)``;
      with ``use_chat_template`` it is then wrapped as a user message (after an optional
      ``system_prompt``) by the chat template of ``tokenizer_name_or_path`` with the generation
      prompt added. The result is the exact text the policy continues: the rollout tokenizes it
      without adding special tokens, so use the policy's own tokenizer here.
    - ``answer`` is the row's ``answer_column`` (e.g. GSM8K's solution ending in ``#### 72``);
    - the extra ``columns`` are passed through to the scorers, repeated per completion.

    Args:
        path: Hub dataset name (``openai/gsm8k``) or a ``datasets`` builder (``json``, ``parquet``,
            ``csv``); None with local ``data_files`` picks the builder from the extension.
        name: dataset configuration (GSM8K: ``main``).
        data_files: local file(s); a dict maps split names to files, a single file is ``train``.
        train_split: split to train on.
        val_split: split for held-out accuracy (None: hold out ``val_fraction`` of train).
        val_fraction: fraction of ``train_split`` held out when ``val_split`` is None.
        prompt_column: column holding the prompt (ignored when ``prompt_template`` is given).
        prompt_template: ``str.format`` template over columns, e.g. ``"Q: {question}\\nA:"``.
        answer_column: column holding the reference answer, exposed to scorers as ``answer``
            (None: the data has no reference; then give ``scorers`` and ``accuracy``).
        columns: extra columns passed through to the scorers (None: every column other than
            the prompt and answer columns; ``[]``: none).
        use_chat_template: wrap the prompt with the tokenizer's chat template.
        tokenizer_name_or_path: tokenizer whose chat template is used (the policy's).
        system_prompt: system message before the user prompt (chat template only).
        max_prompts, max_val_prompts: keep at most this many rows of each split (None: all).
        data_seed: seed of the ``val_fraction`` split.
        accuracy: scorer of held-out accuracy, 1.0 = correct (default: numeric match of the
            answer extracted from the completion, ``\\boxed{}`` else ``####`` else last number).
        prompts_per_step, eval_batch_size, scorers, scorer_weights: see
            :class:`~rlpost.data.task.TaskDataModule`; default scorer: ``accuracy`` as above.
    """

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        train_split: str = "train",
        val_split: str | None = "test",
        val_fraction: float | None = None,
        prompt_column: str = "prompt",
        prompt_template: str | None = None,
        answer_column: str | None = "answer",
        columns: list[str] | None = None,
        use_chat_template: bool = False,
        tokenizer_name_or_path: str | None = None,
        system_prompt: str | None = None,
        max_prompts: int | None = None,
        max_val_prompts: int | None = None,
        data_seed: int = 1234,
        accuracy: Callable | None = None,
        prompts_per_step: int = 8,
        eval_batch_size: int = 64,
        scorers: Mapping[str, Callable] | None = None,
        scorer_weights: Mapping[str, float] | None = None,
    ):
        super().__init__(prompts_per_step=prompts_per_step, eval_batch_size=eval_batch_size,
                         required_columns=("answer",) if answer_column is not None else (),
                         scorers=scorers, scorer_weights=scorer_weights)
        if use_chat_template and tokenizer_name_or_path is None:
            raise ValueError("use_chat_template=True needs tokenizer_name_or_path (the policy's tokenizer)")
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
        train, val, source = load_splits(h.path, h.name, h.data_files, h.train_split, h.val_split, h.val_fraction,
                                         h.data_seed)
        val_name = h.val_split or f"{h.train_split} (val_fraction={h.val_fraction})"
        for ds, split, limit, attr in ((train, h.train_split, h.max_prompts, "train_dataset"),
                                       (val, val_name, h.max_val_prompts, "val_dataset")):
            where = f"split {split!r} of {source}"
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
        wrap = self._chat_wrapper() if h.use_chat_template else (lambda text: text)

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

    def _chat_wrapper(self) -> Callable[[str], str]:
        from rlpost.models import load_tokenizer

        h = self.hparams
        tokenizer = load_tokenizer(h.tokenizer_name_or_path)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"use_chat_template=True but the tokenizer of {h.tokenizer_name_or_path!r} "
                             "has no chat template")
        system = [] if h.system_prompt is None else [{"role": "system", "content": h.system_prompt}]

        def wrap(text: str) -> str:
            messages = [*system, {"role": "user", "content": text}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        return wrap
