"""DatasetTask on local files the tests write (GSM8K layout: question, answer "...#### 72")."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from rlpost.algorithms import GRPO
from rlpost.chat import render_prompts
from rlpost.data import DatasetTask
from rlpost.models import build_char_tokenizer
from rlpost.scoring.verifiers import NumericMatchScorer
from tests.conftest import make_trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def gsm8k_like(pairs):
    """Rows laid out like GSM8K; questions use only the tiny model's characters."""
    return [{"question": f"{a}+{b}=", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}", "source": f"s{a}"}
            for a, b in pairs]


TRAIN = gsm8k_like([(a, b) for a in range(1, 5) for b in range(1, 4)])  # 12 rows
TEST = gsm8k_like([(7, 1), (2, 2), (5, 3)])


def write(path: Path, rows: list[dict]) -> str:
    if path.suffix == ".parquet":
        pd.DataFrame(rows, columns=["question", "answer", "source"]).astype(str).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(params=["jsonl", "parquet"])
def gsm8k_files(request, tmp_path):
    ext = request.param
    return {"train": write(tmp_path / f"train.{ext}", TRAIN), "test": write(tmp_path / f"test.{ext}", TEST)}


def gsm8k_task(data_files, **kw):
    args = dict(data_files=data_files, prompt_column="question", answer_column="answer", prompts_per_step=2,
                eval_batch_size=8)
    args.update(kw)
    return DatasetTask(**args)


# --------------------------------------------------------------------------- end to end


def test_grpo_runs_end_to_end_on_local_gsm8k_layout(gsm8k_files, tmp_path):
    task = gsm8k_task(gsm8k_files)
    model = GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.0,
                 optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    make_trainer(tmp_path / "run", max_steps=3).fit(model, datamodule=task)
    summary = json.loads(Path(model.summary_path).read_text())
    assert summary["steps"] == 3 and summary["eval_prompts"] == len(TEST)
    assert 0.0 <= summary["accuracy_before"] <= 1.0 and 0.0 <= summary["accuracy_after"] <= 1.0
    assert all(0.0 <= h["train/rewards/accuracy/mean"] <= 1.0 for h in model.history)
    assert (Path(model.summary_path).parent / "policy" / "config.json").exists()


def test_rows_become_prompt_answer_and_passthrough_columns(gsm8k_files):
    task = gsm8k_task(gsm8k_files)
    task.setup("fit")
    assert sorted(task.train_dataset.column_names) == ["answer", "prompt", "source"]
    assert task.val_dataset[0] == {"prompt": "7+1=", "answer": "7 plus 1 is 8.\n#### 8", "source": "s7"}
    assert len(task.train_dataset) == 12


def test_the_default_scorer_reads_the_number_after_hashes_in_the_reference(gsm8k_files):
    task = gsm8k_task(gsm8k_files)
    task.setup("fit")
    batch = task.val_dataset[:3]
    completions = ["8", r"so \boxed{4}", "it is 9"]
    result = task.scorers()(batch["prompt"], completions, {"answer": batch["answer"], "source": batch["source"]})
    assert result.per_scorer["accuracy"].tolist() == [1.0, 1.0, 0.0]


def test_prompt_template_and_extra_columns_reach_the_scorers(tmp_path):
    calls = []

    def spy(prompts, completions, answer, source, **kwargs):
        calls.append(dict(prompts=list(prompts), source=list(source), answer=list(answer)))
        return [0.0] * len(completions)

    files = {"train": write(tmp_path / "train.jsonl", TRAIN), "test": write(tmp_path / "test.jsonl", TEST)}
    task = gsm8k_task(files, prompt_template="({question}) ", columns=["source"], scorers={"spy": spy},
                      accuracy=NumericMatchScorer(extract="auto"))
    model = GRPO(model_name_or_path="builtin:tiny", num_generations=2, max_completion_length=3, beta=0.0,
                 save_policy=False)
    make_trainer(tmp_path, max_steps=1).fit(model, datamodule=task)
    for seen in calls:  # the scorer dry run, held-out evaluation before and after, and the training rollout
        assert all(p.startswith("(") and p.endswith("=) ") for p in seen["prompts"])
        assert all(s.startswith("s") for s in seen["source"])
        assert all("####" in a for a in seen["answer"])
    # the dry run: the first 4 training prompts, one completion each
    assert calls[0]["prompts"] == [f"({r['question']}) " for r in TRAIN[:4]]
    # the training rollout: prompts_per_step x num_generations, columns repeated per completion
    train_calls = [c for c in calls[1:] if len(c["prompts"]) == 2 * 2]
    assert len(train_calls) == 1 and train_calls[0]["prompts"][0] == train_calls[0]["prompts"][1]


def test_val_fraction_and_row_limits(tmp_path):
    task = DatasetTask(data_files=write(tmp_path / "all.jsonl", TRAIN), prompt_column="question", val_split=None,
                       val_fraction=0.25, max_val_prompts=2, data_seed=0)
    task.setup("fit")
    assert len(task.train_dataset) == 9 and len(task.val_dataset) == 2
    assert not set(task.train_dataset["prompt"]) & set(task.val_dataset["prompt"])


def test_chat_template_makes_conversations_that_the_policy_template_renders(tmp_path):
    """The task keeps TRL's conversational format; the policy's tokenizer renders it (rlpost.chat)."""
    tok = build_char_tokenizer()
    tok.chat_template = ("{% for m in messages %}({{ m['content'] }}){% endfor %}"
                         "{% if add_generation_prompt %}={% endif %}")
    files = {"train": write(tmp_path / "train.jsonl", TRAIN), "test": write(tmp_path / "test.jsonl", TEST)}
    task = gsm8k_task(files, use_chat_template=True, system_prompt="0")
    task.setup("fit")
    assert task.val_dataset[0]["prompt"] == [{"role": "system", "content": "0"}, {"role": "user", "content": "7+1="}]
    assert render_prompts(tok, task.val_dataset["prompt"][:1]) == ["(0)(7+1=)="]


# --------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt_column="query"), r"split 'train' of data_files=.* has no column 'query' \(prompt_column\); "
                                      r"its columns are \['question', 'answer', 'source'\]"),
        (dict(answer_column="solution"), r"split 'train' .* has no column 'solution' \(answer_column\)"),
        (dict(prompt_template="{question} in {unit}"), r"has no column 'unit' \(prompt_template\)"),
        (dict(columns=["level"]), r"has no column 'level' \(columns\)"),
        (dict(val_split="validation"), r"split 'validation' not found in data_files=.*; available splits: "
                                       r"\['test', 'train'\]"),
    ],
    ids=["prompt-column", "answer-column", "template-field", "extra-column", "split-name"],
)
def test_missing_column_or_split_is_named(gsm8k_files, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gsm8k_task(gsm8k_files, **kwargs).setup("fit")


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_empty_split_is_named(tmp_path, ext):
    files = {"train": write(tmp_path / f"train.{ext}", TRAIN), "test": write(tmp_path / f"test.{ext}", [])}
    with pytest.raises(ValueError, match=r"split 'test' of data_files=.* is empty"):
        gsm8k_task(files).setup("fit")


def test_a_split_emptied_by_the_data_is_named(tmp_path, monkeypatch):
    """A split that loads but has no rows (e.g. a Hub split) is refused the same way."""
    from datasets import Dataset, DatasetDict

    empty = Dataset.from_dict({"question": [], "answer": []})
    monkeypatch.setattr("rlpost.data.source.load_dataset", lambda *a, **k: DatasetDict(
        train=Dataset.from_dict({"question": ["1+1="], "answer": ["#### 2"]}), test=empty))
    with pytest.raises(ValueError, match=r"split 'test' of some/hub-set is empty"):
        DatasetTask(path="some/hub-set", prompt_column="question").setup("fit")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "give `path`"),
        (dict(data_files="x.txt"), r"cannot tell the format of data_files='x.txt'"),
        (dict(data_files="x.jsonl", val_split=None), "give exactly one of val_split and val_fraction"),
        (dict(data_files="x.jsonl", val_split=None, val_fraction=1.5), r"val_fraction must be in \(0, 1\)"),
    ],
)
def test_bad_sources_are_refused_at_setup(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DatasetTask(**kwargs).setup("fit")


def test_splits_whose_columns_differ_name_the_root_cause_in_the_first_line(tmp_path):
    train = write(tmp_path / "train.jsonl", TRAIN)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": r["question"], "answer": r["answer"]}) + "\n" for r in TEST))
    with pytest.raises(ValueError) as info:
        gsm8k_task({"train": train, "test": str(test)}).setup("fit")
    first = str(info.value).splitlines()[0]  # used to end in "DatasetGenerationError: An error occurred ..."
    assert first.startswith(f"could not load data_files={{'train': {train!r}, 'test': {str(test)!r}}}")
    assert "CastError: Couldn't cast" in first and "because column names don't match" in first
    assert "every split must have the same columns" in first and "(raised via DatasetGenerationError)" in first


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(system_prompt="be brief"), "system_prompt is only used with use_chat_template=True"),
        (dict(columns=["answer"]), r"columns \['answer'\] are reserved"),
        (dict(prompt_template="{0}"), r"prompt_template field \{0\} is not a plain column name"),
        (dict(answer_column=None), "answer_column=None: give `scorers` and `accuracy`"),
        (dict(max_prompts=0), "max_prompts must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DatasetTask(data_files="x.jsonl", **kwargs)


def test_a_tokenizer_without_chat_template_is_refused(gsm8k_files):
    task = gsm8k_task(gsm8k_files, use_chat_template=True)
    task.setup("fit")
    with pytest.raises(ValueError, match="prompts are conversations but the policy's tokenizer .* has no chat template"):
        render_prompts(build_char_tokenizer(), task.val_dataset["prompt"])


# --------------------------------------------------------------------------- the GSM8K config


def test_qwen_gsm8k_config_parses_and_its_scorers_read_gsm8k_answers():
    """The user-facing config, parsed by the CLI offline; its data section is built for real
    (nothing is downloaded until setup) and its scorers are checked on GSM8K-style text."""
    from jsonargparse import ArgumentParser

    from rlpost.cli import cli_main

    with pytest.raises(SystemExit) as exit_info:  # --print_config parses, validates, prints, exits
        cli_main(["fit", "--config", str(CONFIGS / "grpo_qwen_gsm8k.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)

    data_cfg = yaml.safe_load((CONFIGS / "grpo_qwen_gsm8k.yaml").read_text())["data"]
    parser = ArgumentParser()
    parser.add_class_arguments(DatasetTask, "data")
    task = parser.instantiate_classes(parser.parse_object({"data": data_cfg["init_args"]})).data
    assert task.hparams.path == "openai/gsm8k" and task.hparams.use_chat_template
    reference = ["Natalia sold 48/2 = 24 clips in May.\n#### 72"] * 3
    completions = [r"She sold 48 + 24 = 72 clips. The answer is \boxed{72}.", "48 + 24 = 72", r"\boxed{71}"]
    result = task.scorers()(["q"] * 3, completions, {"answer": reference})
    assert result.per_scorer["correctness"].tolist() == [1.0, 0.0, 0.0]
    assert result.per_scorer["format"].tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(result.total, torch.tensor([1.1, 0.0, 0.1]), atol=1e-6, rtol=0)
    assert task.accuracy_scorer()(["q"] * 3, completions, answer=reference) == [1.0, 1.0, 0.0]


def test_tiny_text_builtin_runs_grpo_with_a_chat_template_on_gsm8k_layout_offline(tmp_path):
    """The byte-level built-in reads GSM8K-length English prompts in its ChatML template: 2 GRPO steps."""
    from rlpost.chat import render_prompts
    from rlpost.models import context_length, load_config, load_tokenizer

    question = ("Natalia sold clips to {n} of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May? Show your work; Janet’s answer: é.")
    rows = [{"question": question.format(n=n), "answer": f"{n} + {n // 2} = {n + n // 2}\n#### {n + n // 2}"}
            for n in range(10, 50, 4)]
    files = {"train": write(tmp_path / "train.jsonl", rows[:6]), "test": write(tmp_path / "test.jsonl", rows[6:])}
    task = gsm8k_task(files, use_chat_template=True,
                      system_prompt="Please reason step by step, and put your final answer within \\boxed{}.",
                      max_val_prompts=2)
    model = GRPO(model_name_or_path="builtin:tiny-text", num_generations=2, max_completion_length=16, beta=0.04,
                 optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    tok = load_tokenizer("builtin:tiny-text")
    task.setup()
    prompt = render_prompts(tok, [task.train_dataset[0]["prompt"]])[0]  # as the rollout renders the conversation
    assert prompt.startswith("<|im_start|>system\nPlease reason") and prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id is None and tok.decode(ids) == prompt  # every byte is a token: nothing unknown
    assert len(ids) > 64 and len(ids) + 64 <= context_length(load_config("builtin:tiny-text")) == 2048
    make_trainer(tmp_path / "run", max_steps=2).fit(model, datamodule=task)
    summary = json.loads(Path(model.summary_path).read_text())
    assert summary["steps"] == 2 and summary["completions_generated"] == 2 * 2 * 2
    assert "train/kl" in summary["history"][-1]  # the reference model ran on the chat prompts too
