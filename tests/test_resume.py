"""Exact resume: a run resumed from a mid-run checkpoint is the uninterrupted run, step for step.

The runs are CPU-deterministic: the uninterrupted run (steps 1-6, a validation every 3 steps, an
epoch boundary after step 4) saves a checkpoint after every step; a fresh module and trainer resume
from the one after step 3 (mid-epoch, right before a validation) or step 4 (the end of an epoch).
Per-step metrics, final weights and ``summary.json`` (timings, memory and paths aside) must be
identical; a control without the data position and RNG state shows the test can fail.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from rlpost.algorithms import GRPO
from rlpost.models import load_policy
from tests.conftest import ToyTask, make_trainer

TIMING = ("wall_s", "generation_s", "training_s", "completion_tokens_per_s", "train/completion_tokens_per_s",
          "peak_memory_bytes", "phases", "model_dir", "s_per_call")


def untimed(x):
    """``x`` without timings, memory figures and paths (they differ between processes and runs)."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING and not k.startswith("time/")}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def fit(root, max_steps=6, ckpt_path=None, **model_kwargs):
    seed_everything(0)
    args = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
                save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    model = GRPO(**{**args, **model_kwargs})
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = make_trainer(root, max_steps=max_steps, enable_checkpointing=True, callbacks=[checkpoints],
                           limit_val_batches=1, val_check_interval=3, check_val_every_n_epoch=None, log_every_n_steps=1)
    trainer.fit(model, datamodule=ToyTask(), ckpt_path=ckpt_path)  # 8 prompts, 2 per step: 4 steps an epoch
    return model


def weights(model):
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    model = fit(root)
    return root, model, weights(model)


@pytest.mark.parametrize("step", [3, 4], ids=["mid-epoch-before-a-validation", "end-of-epoch"])
def test_resumed_run_is_the_uninterrupted_run(uninterrupted, tmp_path, step):
    root, a, a_weights = uninterrupted
    b = fit(tmp_path, ckpt_path=str(root / "ckpt" / f"step={step}.ckpt"))
    # per-step losses, rewards, KL, entropy ... of steps 4-6 (and 1-3, restored) are identical
    assert [r["step"] for r in b.history] == [1, 2, 3, 4, 5, 6]
    assert untimed(b.history) == untimed(a.history)
    assert all(torch.equal(v, a_weights[k]) for k, v in weights(b).items())  # bit-identical final weights
    # summary.json covers the whole run: evaluation before training from the original start, the
    # validation that followed the checkpoint (made up on resume), counters over all six steps
    sa, sb = (json.loads(m.summary_path.read_text()) for m in (a, b))
    assert sb["rollouts"] == 6 and sb["completions_generated"] == 6 * 2 * 4 and sb["steps"] == 6
    assert [r["step"] for r in sb["val_history"]] == [0, 3, 6]
    assert untimed(sb) == untimed(sa)


def test_the_reference_is_rebuilt_not_stored(uninterrupted, tmp_path):
    root, a, _ = uninterrupted
    ckpt = torch.load(root / "ckpt" / "step=3.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("reference.")]
    assert [k for k in ckpt["state_dict"] if k.startswith("policy.")]
    b = fit(tmp_path, max_steps=3, ckpt_path=str(root / "ckpt" / "step=3.ckpt"))  # nothing left to train
    start = load_policy("builtin:tiny").state_dict()
    for k, v in b.reference.state_dict().items():
        assert torch.equal(v, a.reference.state_dict()[k]) and torch.equal(v, start[k])


def test_control_without_data_position_and_rng_state_differs(uninterrupted, tmp_path):
    """The same resume with the loader position and the RNG states removed from the checkpoint trains on
    other prompts with other samples: the comparison above can fail."""
    root, a, a_weights = uninterrupted
    ckpt = torch.load(root / "ckpt" / "step=3.ckpt", weights_only=True)
    ckpt["loops"]["fit_loop"]["state_dict"].pop("combined_loader")
    ckpt["callbacks"].pop("RNGState")
    torch.save(ckpt, tmp_path / "stripped.ckpt")
    b = fit(tmp_path, ckpt_path=str(tmp_path / "stripped.ckpt"))
    assert untimed(b.history[3:]) != untimed(a.history[3:])
    assert not all(torch.equal(v, a_weights[k]) for k, v in weights(b).items())


@pytest.mark.parametrize("change, match", [
    (dict(num_generations=2), r"model.num_generations: checkpoint 4, now 2"),
    (dict(model_name_or_path="builtin:arith-sft"),
     r"model.model_name_or_path: checkpoint 'builtin:tiny', now 'builtin:arith-sft'"),
    (dict(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)), r"optimizer 0 group 0 lr: checkpoint 0.01, now 0.001"),
])
def test_resuming_with_an_unsafe_change_is_refused_naming_field_and_values(uninterrupted, tmp_path, change, match):
    root, _, _ = uninterrupted
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, ckpt_path=str(root / "ckpt" / "step=3.ckpt"), **change)


def test_resuming_with_a_safe_change_applies_it(uninterrupted, tmp_path, caplog):
    root, _, _ = uninterrupted
    b = fit(tmp_path, max_steps=4, ckpt_path=str(root / "ckpt" / "step=3.ckpt"), beta=0.0)
    assert b.hparams.beta == 0.0 and b.reference is None  # applied: no reference is built
    assert b.summary["plan"]["reference_model"] is False
    assert "resume: applying model.beta: checkpoint 0.04, now 0.0" in caplog.text


def test_resuming_with_another_seed_is_refused(uninterrupted, tmp_path, monkeypatch):
    root, _, _ = uninterrupted
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored afterwards: the seed must not leak into other tests
    seed_everything(1)
    model = GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
                 save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    with pytest.raises(ValueError, match=r"seed_everything=1: the checkpoint's run has seed 0"):
        make_trainer(tmp_path, max_steps=6).fit(model, datamodule=ToyTask(), ckpt_path=str(root / "ckpt" / "step=3.ckpt"))


# ----------------------------------------------------------------------------- kill -9


def cli_fit(root, ckpt_dir, *extra, popen=False):
    """``rlpost fit`` of the demo config, shortened (8 steps, 4 prompts x 4), checkpointing every 2 steps."""
    config = Path(__file__).parents[1] / "configs" / "grpo_arith.yaml"
    cmd = [sys.executable, "-m", "rlpost.cli", "fit", "--config", str(config), "--trainer.max_steps", "8",
           "--trainer.default_root_dir", str(root),
           "--trainer.enable_progress_bar", "false", "--data.init_args.num_val_prompts", "16",
           "--data.init_args.prompts_per_step", "4", "--model.init_args.num_generations", "4",
           "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", str(ckpt_dir),
           "--trainer.callbacks.filename", "{step}", "--trainer.callbacks.every_n_train_steps", "2",
           "--trainer.callbacks.save_top_k", "-1", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # same threads: the same numerics
    if popen:
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(re.search(r"summary: (\S+summary\.json)", proc.stdout).group(1)).read_text())


def newest_checkpoint(ckpt_dir):
    return max(ckpt_dir.glob("step=*.ckpt"), key=lambda p: int(p.stem.removeprefix("step=")))


@pytest.mark.slow
def test_a_fit_killed_with_sigkill_resumes_from_its_newest_checkpoint_and_finishes_as_if_uninterrupted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    uninterrupted = cli_fit(tmp_path / "a", tmp_path / "a" / "ckpt")
    proc = cli_fit(tmp_path / "b", tmp_path / "b" / "ckpt", popen=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "b" / "ckpt" / "step=4.ckpt").exists():  # killed wherever it is after its second checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    newest = newest_checkpoint(tmp_path / "b" / "ckpt")
    assert newest.name in ("step=4.ckpt", "step=6.ckpt")  # never a half-written file (the CLI would refuse it)
    resumed = cli_fit(tmp_path / "b", tmp_path / "b" / "ckpt", "--ckpt_path", str(newest))
    assert resumed["steps"] == resumed["rollouts"] == 8 and resumed["completions_generated"] == 8 * 4 * 4
    assert [r["step"] for r in resumed["history"]] == list(range(1, 9))
    assert untimed(resumed) == untimed(uninterrupted)
