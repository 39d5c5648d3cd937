"""``rlpost validate`` / ``rlpost test``: held-out evaluation of a fresh config, a checkpoint and a saved
``policy/`` print Lightning's results table and write ``<run>/validate.json`` / ``test.json`` with the
same metrics as the fit's own evaluations of the same weights."""

import json
from pathlib import Path

import pytest
import yaml

from rlpost.cli import cli_main

METRICS = ("accuracy_greedy", "accuracy_sampled", "reward", "rewards", "n")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 2-step GRPO fit of the shipped warm start on local arithmetic files whose test split is also the
    validation split, so `test` must reproduce the fit's evaluations too; checkpoints every step."""
    tmp = tmp_path_factory.mktemp("validate")
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10, 30, 3) for b in range(40, 60, 4)]
    for name, part in (("train", rows[:24]), ("held_out", rows[24:])):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    config = {
        "seed_everything": 3,
        "trainer": {"max_steps": 2, "accelerator": "cpu", "devices": 1, "limit_val_batches": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp / "runs"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"every_n_train_steps": 1, "save_last": True, "filename": "{step}"}}]},
        "model": {"class_path": "GRPO", "init_args": {
            "model_name_or_path": "builtin:arith-sft", "num_generations": 4, "max_completion_length": 4,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}}},
        "data": {"class_path": "DatasetTask", "init_args": {
            "data_files": {"train": str(tmp / "train.jsonl"), "held_out": str(tmp / "held_out.jsonl")},
            "val_split": "held_out", "test_split": "held_out", "prompts_per_step": 2, "eval_batch_size": 8,
            "accuracy": "rlpost.data.arithmetic_verifier", "scorers": {"accuracy": "rlpost.data.arithmetic_verifier"}}},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = cli_main(["fit", "--config", str(path)])
    summary = json.loads(Path(cli.model.summary_path).read_text())
    return path, summary, Path(cli.model.summary_path).parent


def run(args: list[str], capsys) -> tuple[dict, str]:
    """Run ``rlpost ARGS``; return the JSON it wrote into its run directory and what it printed."""
    cli = cli_main(args)
    out = capsys.readouterr().out
    stage = args[0]
    written = json.loads((Path(cli.trainer.log_dir) / f"{stage}.json").read_text())
    return written, out


def metrics(row: dict) -> dict:
    return {k: row[k] for k in METRICS}


def assert_printed(out: str, prefix: str, row: dict) -> None:
    for key in ("accuracy_greedy", "accuracy_sampled", "reward"):
        line = next(ln for ln in out.splitlines() if f"{prefix}/{key} " in ln)  # Lightning's results table
        assert float(line.split("│")[2]) == pytest.approx(row[key], abs=1e-6)


def test_validate_a_fresh_config_matches_the_fits_first_evaluation(fitted, capsys):
    path, summary, _ = fitted
    written, out = run(["validate", "--config", str(path)], capsys)
    first = summary["val_history"][0]  # the same weights: the warm start, before any update
    assert first["step"] == 0 and metrics(written) == metrics(first)
    assert written["stage"] == "validate" and written["split"] == "validation" and written["checkpoint"] is None
    assert_printed(out, "val", first)


def test_validate_and_test_a_checkpoint_match_the_fits_final_evaluation(fitted, capsys):
    path, summary, run_dir = fitted
    last = summary["val_history"][-1]
    assert last["step"] == 2 and metrics(last) != metrics(summary["val_history"][0])  # training changed the policy
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    written, out = run(["validate", "--config", str(path), "--ckpt_path", ckpt], capsys)
    assert metrics(written) == metrics(last) and written["step"] == 2 and written["checkpoint"] == ckpt
    assert_printed(out, "val", last)
    written, out = run(["test", "--config", str(path), "--ckpt_path", ckpt], capsys)  # test split = validation here
    assert metrics(written) == metrics(last) and written["split"] == "test"
    assert_printed(out, "test", last)


def test_validate_a_saved_policy_directory_matches_the_fits_final_evaluation(fitted, capsys):
    path, summary, run_dir = fitted
    written, out = run(["validate", "--config", str(path), "--model.init_args.model_name_or_path",
                        str(run_dir / "policy")], capsys)
    assert metrics(written) == metrics(summary["val_history"][-1])
    assert_printed(out, "val", summary["val_history"][-1])


def test_test_refuses_a_task_without_a_test_split_naming_the_argument(fitted):
    path, _, _ = fitted
    with pytest.raises(ValueError, match="DatasetTask has no test split: set data.init_args.test_split"):
        cli_main(["test", "--config", str(path), "--data.init_args.test_split", "null"])
