"""2-process CPU DDP (gloo): each rank rolls out its own prompts, parameters stay identical."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {root!r})
    from lightning import Callback, Trainer
    from rlpost.algorithms import GRPO
    from tests.conftest import ToyTask

    class Dump(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            module.seen = getattr(module, "seen", []) + list(batch["prompt"])
        def on_train_end(self, trainer, module):
            params = torch.cat([p.detach().flatten() for p in module.policy.parameters()])
            torch.save({{"params": params, "seen": module.seen}}, {out!r} + f"/rank{{trainer.global_rank}}.pt")

    model = GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
                 save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    trainer = Trainer(accelerator="cpu", strategy="ddp", devices=2, max_steps=2, max_epochs=-1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, default_root_dir={out!r}, callbacks=[Dump()])
    trainer.fit(model, datamodule=ToyTask(prompts_per_step=2))
    """
)


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    import rlpost
    from pathlib import Path

    root = str(Path(rlpost.__file__).parents[1])
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(root=root, out=str(tmp_path)))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["params"], r1["params"])  # identical after 2 optimizer steps
    # each rank rolled out its own prompts (DistributedSampler), 2 steps x 2 prompts each
    assert len(r0["seen"]) == len(r1["seen"]) == 4 and not set(r0["seen"]) & set(r1["seen"])
    from rlpost.models import load_policy

    start = torch.cat([p.flatten() for p in load_policy("builtin:tiny").parameters()])
    assert not torch.equal(start, r0["params"])  # the update did happen


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {root!r})
    from lightning import Callback, Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from rlpost.algorithms import GRPO
    from tests.conftest import ToyTask

    class Dump(Callback):
        def on_train_end(self, trainer, module):
            params = torch.cat([p.detach().flatten() for p in module.policy.parameters()])
            timing = ("wall_s", "train/completion_tokens_per_s")
            rows = [{{k: v for k, v in r.items() if not k.startswith("time/") and k not in timing}} for r in module.history]
            torch.save({{"params": params, "history": rows}}, {out!r} + f"/rank{{trainer.global_rank}}.pt")

    seed_everything(0)
    model = GRPO(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
                 save_policy=False, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    ckpt = ModelCheckpoint(dirpath={out!r} + "/ckpt", filename="{{step}}", every_n_train_steps=2, save_top_k=-1)
    trainer = Trainer(accelerator="cpu", strategy="ddp", devices=2, max_steps=4, max_epochs=-1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir={out!r}, callbacks=[Dump(), ckpt])
    trainer.fit(model, datamodule=ToyTask(prompts_per_step=1), ckpt_path={ckpt_path!r})
    """
)


@pytest.mark.slow
def test_two_process_ddp_resumes_exactly(tmp_path):
    """Each rank resumes its own data position and random state: a DDP run resumed after step 2 of 4 ends with
    the uninterrupted run's weights and per-step history (4 prompts per rank per epoch: the resume crosses an
    epoch boundary of the per-rank sampler)."""
    import rlpost
    from pathlib import Path

    root = str(Path(rlpost.__file__).parents[1])
    runs = {}
    for name, ckpt_path in (("a", None), ("b", str(tmp_path / "a" / "ckpt" / "step=2.ckpt"))):
        out = tmp_path / name
        out.mkdir()
        script = out / "run.py"
        script.write_text(RESUME_SCRIPT.format(root=root, out=str(out), ckpt_path=ckpt_path))
        proc = subprocess.run([sys.executable, str(script)], cwd=out, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for a, b in zip(runs["a"], runs["b"]):
        assert torch.equal(a["params"], b["params"])
        assert [r["step"] for r in b["history"]] == [1, 2, 3, 4] and b["history"] == a["history"]
