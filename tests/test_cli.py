import glob
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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
    """The console entry point, with command-line overrides: TensorBoard logs (no hp_metric), summary.json,
    the policy and the shipped config's periodic checkpoints all land under --trainer.default_root_dir."""
    root = tmp_path / "elsewhere"
    cmd = [
        sys.executable, "-m", "rlpost", "fit", "--config", str(ROOT / "configs/grpo_arith.yaml"),
        "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root), "--seed_everything", "7",
        "--data.init_args.num_val_prompts", "32", "--model.init_args.num_generations", "4",
        "--trainer.callbacks.init_args.every_n_train_steps", "2",  # the shipped ModelCheckpoint, every 2 steps
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(re.search(r"summary: (\S+summary\.json)", proc.stdout).group(1))
    assert path.resolve().parent.parent == root.resolve()  # <root>/version_0/summary.json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]  # nothing under ./runs
    ckpt = path.parent / "checkpoints"
    assert (ckpt / "step=2.ckpt").is_file() and (ckpt / "last.ckpt").exists()
    assert torch.load(ckpt / "step=2.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    events = EventAccumulator(str(path.parent)).Reload()
    assert "hp_metric" not in events.Tags()["scalars"] and "train/reward" in events.Tags()["scalars"]
    summary = json.loads(path.read_text())
    assert summary["seed"] == 7 and summary["steps"] == 3 and summary["eval_prompts"] == 32
    assert summary["completions_generated"] == 3 * 32 * 4  # 3 steps x the config's 32 prompts x G=4
    assert summary["hparams"]["num_generations"] == 4
    assert glob.glob(str(path.parent / "events.out.tfevents.*"))  # TensorBoard by default
    assert (path.parent / "policy" / "config.json").exists()


def test_every_shipped_rl_config_checkpoints_periodically_and_keeps_last():
    for config in CONFIGS:
        cfg = yaml.safe_load(Path(config).read_text())
        if not cfg["trainer"].get("enable_checkpointing"):
            continue
        (ckpt,) = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
        assert ckpt["init_args"]["every_n_train_steps"] > 0 and ckpt["init_args"]["save_last"], config
        assert "logger" not in cfg["trainer"], f"{config}: a logger pins the run directory (default_root_dir moves it)"


def run_main(args, capsys) -> tuple[int, str, str]:
    """``rlpost ARGS`` in this process: (exit status, stdout, stderr)."""
    from rlpost.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_compare_and_short_names_resolve(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "rlpost compare SUITE.yaml" in out
    code, out, err = run_main(["fit", "--model.help", "GRPO"], capsys)
    assert code == 0 and "--model.scale_rewards" in out, err[-2000:]
    code, out, _ = run_main(["fit", "--help"], capsys)
    for name in ("rlpost.algorithms.GRPO", "rlpost.algorithms.PPO", "rlpost.data.ArithmeticTask", "rlpost.data.DatasetTask"):
        assert name in " ".join(out.split())


def test_python_dash_m_rlpost_is_the_same_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlpost", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "rlpost compare SUITE.yaml" in proc.stdout


def test_predict_is_not_offered_with_a_pointer_to_validate(capsys):
    code, _, err = run_main(["predict", "--config", str(ROOT / "configs/grpo_arith.yaml")], capsys)
    assert code == 2 and "rlpost validate" in err and "eval_completions.jsonl" in err


def test_a_failed_command_leaves_no_run_directory(tmp_path):
    with pytest.raises(ValueError, match="mini_batch_size=7"):
        cli_main(["fit", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--trainer.default_root_dir",
                  str(tmp_path / "out"), "--model.init_args.mini_batch_size", "7", "--trainer.enable_progress_bar",
                  "false"])
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").glob("version_*"))


def test_threads_rule(monkeypatch):
    from rlpost.config import DEFAULT_CPU_THREADS, apply_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert apply_threads(None, "cpu") == DEFAULT_CPU_THREADS == torch.get_num_threads() == 1
        assert apply_threads(3, "cpu") == 3 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_threads(None, "cpu") is None and torch.get_num_threads() == 3  # the environment's choice stands
        with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
            apply_threads(0, "cpu")
    finally:
        torch.set_num_threads(before)


def test_the_progress_bar_counts_optimizer_steps_out_of_max_steps():
    from lightning import Trainer

    from rlpost.config import StepProgressBar

    bar = StepProgressBar()
    trainer = Trainer(max_steps=7, max_epochs=-1, callbacks=[bar], logger=False, enable_checkpointing=False)
    bar._trainer = trainer  # what Lightning's setup does
    assert trainer.progress_bar_callback is bar and bar.total_train_batches == 7
    assert "Epoch" not in bar._get_train_description(0)


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
                  "--data.init_args.prompts_per_step", "8",
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
                  "--data.init_args.prompts_per_step", "8", "--trainer.strategy", "ddp", "--trainer.devices", "2",
                  "--trainer.default_root_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^  world_size +2$", out, re.M) and re.search(r"^  completions_total \(all ranks\) +1280$", out, re.M)


def test_print_plan_refuses_an_impossible_plan_with_the_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"mini_batch_size=24 does not divide the 64 completions per rollout"):
        cli_main(["fit", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--print_plan",
                  "--data.init_args.prompts_per_step", "8", "--model.init_args.mini_batch_size", "24", "--trainer.default_root_dir", str(tmp_path)])


def test_print_plan_is_a_fit_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", "--config", str(ROOT / "configs/grpo_arith.yaml"), "--print_plan"])
    assert exit_info.value.code == 2 and "--print_plan is a fit option" in capsys.readouterr().err
