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
        "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path), "--seed_everything", "7",
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
