"""Where a dataset comes from: a Hub dataset or local json/jsonl/parquet/csv files, and its splits.

:class:`DataSource` is the source arguments every ``datasets``-backed data module takes
(:class:`~rlpost.data.DatasetTask`, :class:`~rlpost.data.PreferenceData`), and
:func:`load_splits` the one way they load a train and a validation split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

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
    test_split: str | None = None,
) -> tuple[Dataset, Dataset, Dataset | None, str]:
    """Load a train and a validation split with ``datasets.load_dataset``.

    ``path`` is a Hub name (``openai/gsm8k``) or a builder (``json``, ``parquet``, ``csv``);
    with local ``data_files`` alone the builder comes from the file extension. A single file
    or a list of files is the split ``train``; a dict names the splits. The validation split
    is ``val_split``, or a ``val_fraction`` of the train split held out with ``data_seed``; the test
    split is ``test_split`` (None: no test split).

    Returns:
        (train, val, test, source) where ``source`` describes where the data came from, for messages.
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
    except Exception as err:  # re-raised with the source and the root cause named, never swallowed
        raise ValueError(f"could not load {source} (builder {builder!r}, name {name!r}): {root_cause(err)}") from err
    if not isinstance(splits, DatasetDict):
        raise ValueError(f"{source} did not load as named splits (got {type(splits).__name__})")
    for split in (train_split, val_split, test_split):
        if split is not None and split not in splits:
            hint = "; name the splits with data_files: {train: ..., test: ...} or set val_fraction" if data_files else ""
            raise ValueError(f"split {split!r} not found in {source}; available splits: {sorted(splits)}{hint}")
    train, test = splits[train_split], None if test_split is None else splits[test_split]
    if val_split is not None:
        return train, splits[val_split], test, source
    if len(train) < 2:
        raise ValueError(f"split {train_split!r} of {source} has {len(train)} rows: too few to hold out val_fraction")
    parts = train.train_test_split(test_size=val_fraction, seed=data_seed)
    return parts["train"], parts["test"], test, source


def root_cause(err: BaseException) -> str:
    """The innermost cause of ``err`` on one line, with the chain that wrapped it: ``datasets`` wraps the
    real problem (e.g. splits whose columns differ) in a generic ``DatasetGenerationError``."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    root = chain[-1]
    text = " ".join(str(root).split())
    if "column names don't match" in text:
        text += " (every split must have the same columns: the json/csv/parquet builders read all splits with one schema)"
    via = " <- ".join(type(e).__name__ for e in chain[:-1])
    return f"{type(root).__name__}: {text}" + (f" (raised via {via})" if via else "")


def check_columns(dataset: Dataset, needed: Mapping[str, str], where: str) -> None:
    """Raise naming each missing column and the argument that asked for it.

    Args:
        needed: column -> the argument that names it (e.g. ``{"question": "prompt_column"}``).
    """
    missing = [f"{col!r} ({arg})" for col, arg in needed.items() if col not in dataset.column_names]
    if missing:
        raise ValueError(f"{where} has no column {', '.join(missing)}; its columns are {dataset.column_names}")


class DataSource:
    """Mixin for data modules: the ``datasets`` source arguments, kept in ``self.source``.

    Args:
        path: Hub dataset name (``openai/gsm8k``) or a ``datasets`` builder (``json``, ``parquet``,
            ``csv``); None with local ``data_files`` picks the builder from the extension.
        name: dataset configuration (GSM8K: ``main``).
        data_files: local file(s); a dict maps split names to files, a single file is ``train``.
        train_split: split to train on.
        val_split: held-out split (None: hold out ``val_fraction`` of train).
        val_fraction: fraction of ``train_split`` held out when ``val_split`` is None.
        data_seed: seed of the ``val_fraction`` split.
        test_split: the test split (``rlpost test``); None: no test split.
    """

    def __init__(self, path: str | None = None, name: str | None = None,
                 data_files: str | list[str] | dict[str, str | list[str]] | None = None, train_split: str = "train",
                 val_split: str | None = "test", val_fraction: float | None = None, data_seed: int = 1234,
                 test_split: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.source = dict(path=path, name=name, data_files=data_files, train_split=train_split, val_split=val_split,
                           val_fraction=val_fraction, data_seed=data_seed, test_split=test_split)

    def load_source(self) -> list[tuple[Dataset | None, str]]:
        """[(train, where), (val, where), (test or None, where)]: the splits, each with where it came from."""
        s = self.source
        train, val, test, source = load_splits(**s)
        val_name = s["val_split"] or f"{s['train_split']} (val_fraction={s['val_fraction']})"
        return [(train, f"split {s['train_split']!r} of {source}"), (val, f"split {val_name!r} of {source}"),
                (test, f"split {s['test_split']!r} of {source}")]
