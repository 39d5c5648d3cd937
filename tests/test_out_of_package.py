"""A variant and a scorer in the user's own files, run from their directory exactly as the README says."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def readme_block(first_line: str) -> str:
    """The README's fenced code block whose first line is ``first_line``."""
    blocks = re.findall(r"```(?:python|yaml|bash)\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.splitlines()[0] == first_line]
    return block


def test_a_variant_and_a_scorer_from_the_current_directory_run_as_the_readme_says(tmp_path):
    for name in ("my_variant.py", "my_rewards.py", "my_run.yaml"):
        (tmp_path / name).write_text(readme_block(f"# {name}"))
    command = readme_block("rlpost fit --config my_run.yaml           # from the directory that holds the three files")
    args = command.splitlines()[0].split("#")[0].split()
    assert args == ["rlpost", "fit", "--config", "my_run.yaml"]
    rlpost = Path(sys.executable).parent / "rlpost"  # the console script, not `python -m` (which adds the cwd itself)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(rlpost), *args[1:], "--trainer.max_steps", "2", "--data.init_args.num_val_prompts", "16",
                           "--trainer.log_every_n_steps", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / re.search(r"summary: (\S+summary\.json)", proc.stdout).group(1)).read_text())
    assert summary["algorithm"] == "MedianGRPO" and summary["steps"] == 2
    assert {"train/rewards/brevity/mean", "train/rewards/accuracy/mean"} <= set(summary["history"][-1])
    assert (tmp_path / "runs" / "median_grpo").is_dir()
