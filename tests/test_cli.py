import glob
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlpost.cli import cli_main

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(str(p) for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[Path(c).stem for c in CONFIGS])
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path" in out and "trainer:" in out


def test_config_typo_is_refused_naming_the_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--model.init_args.num_generatons", "4"])
    assert exit_info.value.code != 0
    assert "num_generatons" in capsys.readouterr().err


def test_yaml_typo_is_refused(tmp_path, capsys):
    bad = (ROOT / "configs/grpo_arith.yaml").read_text().replace("num_generations: 8", "num_generation: 8")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(tmp_path / "bad.yaml")])
    assert exit_info.value.code != 0
    assert "num_generation" in capsys.readouterr().err


def test_rlpost_fit_end_to_end_with_overrides(tmp_path):
    """The console entry point, with command-line overrides, TensorBoard logs and summary.json."""
    cmd = [
        sys.executable, "-m", "rlpost.cli", "fit", "--config", str(ROOT / "configs/grpo_arith.yaml"),
        "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--seed_everything", "7",
        "--data.init_args.num_val_prompts", "32", "--model.init_args.num_generations", "4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(re.search(r"summary: (\S+summary\.json)", proc.stdout).group(1))
    summary = json.loads(path.read_text())
    assert summary["seed"] == 7 and summary["steps"] == 3 and summary["eval_prompts"] == 32
    assert summary["completions_generated"] == 3 * 8 * 4
    assert summary["hparams"]["num_generations"] == 4
    assert glob.glob(str(path.parent / "events.out.tfevents.*"))  # TensorBoard by default
    assert (path.parent / "policy" / "config.json").exists()


# ----------------------------------------------------------------------------- --ckpt_path checked before anything is built


def _bad_checkpoints(tmp_path):
    zipped = tmp_path / "not_lightning.ckpt"
    import torch

    torch.save({"weights": torch.zeros(2)}, zipped)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "global_step": 0}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "adir.ckpt").mkdir()
    return [
        (str(ROOT / "configs/grpo_arith.yaml"), r"is not a checkpoint: not a zip archive"),  # was IndexError: pop from empty list
        (str(tmp_path / "empty.ckpt"), r"is not a checkpoint: an empty file"),
        (str(tmp_path / "missing.ckpt"), r"does not exist"),
        (str(tmp_path / "adir.ckpt"), r"is a directory, not a checkpoint file"),
        (str(truncated), r"is not a checkpoint: not a zip archive|could not be read"),
        (str(zipped), r"is not a Lightning training checkpoint: it has no \['state_dict', 'loops', 'global_step'\]"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["yaml", "empty", "missing", "directory", "truncated", "not-lightning"])
def test_an_unreadable_ckpt_path_is_refused_naming_the_path(tmp_path, capsys, monkeypatch, case):
    path, match = _bad_checkpoints(tmp_path)[case]
    import rlpost.algorithms.policy_module as pm

    monkeypatch.setattr(pm, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--ckpt_path", path])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"rlpost fit: refused: ckpt_path {path!r}" in err and re.search(match, err), err


# ----------------------------------------------------------------------------- --print_plan


def test_print_plan_prints_and_checks_the_plan_without_loading_a_model(tmp_path, capsys, monkeypatch):
    import rlpost.algorithms.policy_module as pm

    monkeypatch.setattr(pm, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--print_plan", "--trainer.max_steps", "40",
                  "--model.init_args.mini_batch_size", "16", "--model.init_args.micro_batch_size", "8"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    # B=8 prompts x G=8 = 64 completions per rollout; mini-batches of 16 -> 4 optimizer steps per rollout;
    # 40 optimizer steps -> 10 rollouts -> 640 completions; 80 of the 4000 training prompts -> 0.02 epochs
    expected = {"prompts_per_step (per device, B)": "8", "num_generations (G)": "8", "world_size": "1",
                "completions_per_step (all ranks)": "64", "optimizer_steps_per_rollout": "4",
                "gradient_accumulation (micro-batches per optimizer step)": "2", "rollouts": "10",
                "completions_total (all ranks)": "640", "epochs over the train split": "0.02",
                "old_logprobs at rollout time": "True", "reference model (beta > 0)": "True"}
    for name, value in expected.items():
        assert re.search(rf"^  {re.escape(name)} +{value}$", out, re.M), (name, out)
    assert list(tmp_path.iterdir()) == []  # nothing written: no log directory, no config.yaml


def test_print_plan_counts_every_rank(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--print_plan", "--trainer.max_steps", "10",
                  "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^  world_size +2$", out, re.M) and re.search(r"^  completions_total \(all ranks\) +1280$", out, re.M)


def test_print_plan_refuses_an_impossible_plan_with_the_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"mini_batch_size=24 does not divide the 64 completions per rollout"):
        cli_main(["fit", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--print_plan",
                  "--model.init_args.mini_batch_size", "24", "--trainer.default_root_dir", str(tmp_path)])


def test_print_plan_is_a_fit_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--print_plan"])
    assert exit_info.value.code == 2 and "--print_plan is a fit option" in capsys.readouterr().err
