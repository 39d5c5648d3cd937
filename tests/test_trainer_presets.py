"""Trainer presets (configs/trainer/*.yaml) compose with every run config, and what they set survives."""

import re
from pathlib import Path

import pytest
import yaml

from rlpost.cli import cli_main

ROOT = Path(__file__).parents[1]
PRESETS = sorted((ROOT / "configs/trainer").glob("*.yaml"))
RUN_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# the stacks the presets' comments and the README show
STACKS = [("grpo_arith", "fsdp", "bf16_mixed"), ("grpo_arith", "ddp", "bf16_true"), ("grpo_qwen_gsm8k", "fsdp"),
          ("grpo_arith", "ddp", "multinode"), ("ppo_arith", "fsdp", "bf16_true")]


def resolved(*configs: Path, capsys) -> dict:
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def preset_trainer(preset: Path) -> dict:
    return yaml.safe_load(preset.read_text())["trainer"]


def test_the_presets_are_the_ones_documented():
    assert {p.stem for p in PRESETS} == {"cpu", "ddp", "fsdp", "multinode", "bf16_mixed", "bf16_true"}
    readme = (ROOT / "README.md").read_text()
    for p in PRESETS:
        assert f"configs/trainer/{p.name}" in readme


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_composes_with_every_run_config(preset, capsys):
    """Each preset over each run config parses, and every trainer value the preset sets is in the result."""
    for config in RUN_CONFIGS:
        trainer = resolved(config, preset, capsys=capsys)["trainer"]
        for key, value in preset_trainer(preset).items():
            assert trainer[key] == value or (isinstance(value, dict) and trainer[key]["class_path"] == value["class_path"]
                                             and value["init_args"].items() <= trainer[key]["init_args"].items()), \
                (config.name, preset.name, key)


@pytest.mark.parametrize("stack", STACKS, ids=["+".join(s) for s in STACKS])
def test_documented_stacks_parse_and_the_last_preset_wins(stack, capsys):
    run, *presets = stack
    paths = [ROOT / f"configs/{run}.yaml", *(ROOT / f"configs/trainer/{p}.yaml" for p in presets)]
    trainer = resolved(*paths, capsys=capsys)["trainer"]
    last = preset_trainer(paths[-1])
    for key, value in last.items():
        assert trainer[key] == value or trainer[key]["class_path"] == value["class_path"]


def test_fsdp_preset_spans_every_process_with_data_parallelism():
    """ModelParallelStrategy() alone puts a node's processes on the tensor-parallel dimension, where FSDP2 would never
    synchronise their gradients: the preset must give data_parallel_size = devices, tensor_parallel_size = 1."""
    t = preset_trainer(ROOT / "configs/trainer/fsdp.yaml")
    assert t["strategy"]["init_args"] == {"data_parallel_size": t["devices"], "tensor_parallel_size": 1}


def test_the_slurm_script_launches_with_srun_and_matching_task_counts():
    script = (ROOT / "docs/slurm_multinode.sbatch").read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", script).group(1))
    tasks = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", script).group(1))
    gpus = int(re.search(r"#SBATCH --gpus-per-node=(\d+)", script).group(1))
    assert tasks == gpus  # one process per GPU: Lightning's SLURMEnvironment checks tasks per node = devices
    assert re.search(rf"srun .*rlpost(\.cli)? fit .*--trainer\.devices {tasks}\b.*--trainer\.num_nodes {nodes}\b",
                     script.replace("\\\n", " "))
