"""The run record: one writer of ``summary.json`` for every fit (algorithms, reward model, TRL row).

A :class:`RunRecord` keeps, for one training run:

- **time per phase** (``generation``, ``scoring``, ``old_logprobs``, ``ref_logprobs``, ``forward``,
  ``backward``, ``optimizer``, ``logging``, any other a loop names; the rest of a step is ``other``),
  and on sampled steps the peak memory of each phase. ``generation_s`` in the summary is the rollout
  (the first four, and ``rollout_other``), ``training_s`` the rest of the steps apart from logging;
- **peak memory** since training started (GPU: allocator peak; CPU: peak RSS, see :mod:`rlpost.memory`)
  and the **memory breakdown** (parameters, gradients and optimizer state per model, taken after
  the first optimizer step);
- the **per-step history**: every training metric, handed over as device tensors and read back to
  the host once per logging interval (one transfer and, under DDP, one all-reduce per interval);
- the **held-out history**: every evaluation, with its step and wall time;
- **counters**: completions generated (on all ranks) and completion tokens;
- **completion samples** (:mod:`rlpost.samples`) every ``log_completions_every_n_steps`` rollouts,
  to TensorBoard and ``completions.jsonl``; every evaluation's to ``eval_completions.jsonl``;

and at the end writes ``summary.json`` and the trained model into the run's log directory (under
``rlpost validate`` / ``test``: ``validate.json`` / ``test.json``). Under Lightning it is a
:class:`~lightning.pytorch.Callback` the algorithm adds itself; the module provides
``held_out_evaluation()``, ``held_out_samples()``, ``summary_fields()``, ``accounted_models()`` and
``export_model(directory)``. The TRL reference row calls :meth:`start`, :meth:`phase`, :meth:`step`,
:meth:`flush`, :meth:`evaluation`, :meth:`summary` and :meth:`write` directly. Its state is
checkpointed, so a resumed run's summary covers the whole run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from torch import Tensor

from rlpost.loggers import flatten_metrics, rank_zero_loggers, write_rows
from rlpost.memory import breakdown_of, peak_memory_bytes, reset_peak_memory
from rlpost.resume import validation_was_due
from rlpost.samples import CompletionSamples, append_jsonl, log_text

PHASES = ("generation", "scoring", "old_logprobs", "ref_logprobs", "forward", "backward", "optimizer", "logging")
# every phase in the order a step runs them (reports stack them so)
PHASE_ORDER = ("generation", "scoring", "old_logprobs", "ref_logprobs", "values", "rollout_other", "forward", "backward",
               "optimizer", "logging", "other")
# summary's generation_s: the rollout; training_s: the rest of each step, logging excepted
ROLLOUT_PHASES = ("generation", "scoring", "old_logprobs", "ref_logprobs", "rollout_other")


class RunRecord(Callback):
    """Timers, memory, history and ``summary.json`` of one run (see the module docstring).

    Args:
        save_model: write the trained model (``export_model``) next to ``summary.json`` at the end.
        phase_memory_every: measure each phase's peak memory on every n-th step (and the first);
            on CPU a measurement costs two ``/proc`` accesses per phase (~85 us), so not every step.
        log_completions_every_n_steps: keep a completion sample every n rollouts (0: never; None:
            every ``trainer.log_every_n_steps``).

    Attribute ``clock``: what phases and steps are timed with, ``time.perf_counter`` (wall time); a
    benchmark on a shared machine may set ``time.process_time`` (CPU time of the process) instead.
    """

    def __init__(self, save_model: bool = True, phase_memory_every: int = 10,
                 log_completions_every_n_steps: int | None = None):
        super().__init__()
        self.save_model = save_model
        self.samples = CompletionSamples(log_completions_every_n_steps)
        self.example: tuple[str, str] | None = None  # the last rollout's first prompt and completion (for guards)
        self.log_dir: Path | None = None  # the run's directory, once Lightning has set it up
        self._is_zero = True
        self.phase_memory_every = phase_memory_every
        self.history: list[dict] = []
        self.val_history: list[dict] = []
        self.phase_s = dict.fromkeys(PHASES, 0.0)
        self.phase_peak: dict[str, int] = {}
        self.counters = {"completions_generated": 0, "rollouts": 0}
        self.breakdown: dict | None = None
        self.summary_path: Path | None = None
        self.summary_data: dict = {}
        self._tokens: Tensor | int = 0
        self._buffer: list[tuple[int, float, dict[str, float], tuple[str, ...], Tensor]] = []
        self._step_phases = dict.fromkeys(PHASES, 0.0)
        self._device = torch.device("cpu")
        self.clock: Callable[[], float] = time.perf_counter
        self._t0 = time.perf_counter()
        self._elapsed_before = 0.0  # wall time of the run before a resume
        self._step_t0: float | None = None
        self._peak = 0
        self._peak_reset = False
        self._sample_memory = True
        self._open: list[list] = []  # the phases now running, innermost last: [start, inner time, name]
        self._step_tokens: Tensor | int = 0
        self._trainer = None  # set at fit start: state_dict flushes through it
        self._unseen: list[dict] = []  # rows flushed but not yet handed to the module's on_history

    # ================================================================== phases and counters
    def start(self, device: torch.device) -> None:
        """Training starts: the peak-memory figure counts from here."""
        self._device = device
        self._peak_reset = reset_peak_memory(device)
        self._peak = 0
        self._step_t0 = self.clock()

    @contextmanager
    def phase(self, name: str):
        """Time (and on sampled steps, the peak memory of) one phase of a step. Phases nest: an outer
        phase is charged only its own time, the inner phase its own."""
        measure = self._sample_memory and self._step_t0 is not None and not self._open
        if measure:
            self._peak = max(self._peak, peak_memory_bytes(self._device))
            reset_peak_memory(self._device)
        frame = [self.clock(), 0.0, name]  # start, time spent in inner phases, name
        self._open.append(frame)
        try:
            yield
        finally:
            self._open.pop()
            dt = self.clock() - frame[0]
            self._step_phases[name] = self._step_phases.get(name, 0.0) + dt - frame[1]
            if self._open:
                self._open[-1][1] += dt
            if measure:
                peak = peak_memory_bytes(self._device)
                self._peak = max(self._peak, peak)
                self.phase_peak[name] = max(self.phase_peak.get(name, 0), peak)

    def open_phase(self) -> str | None:
        """The innermost phase now running, or None."""
        return self._open[-1][2] if self._open else None

    def count(self, completions: int = 0, tokens: Tensor | int = 0) -> None:
        """Completions generated (an int, known on the host) and completion tokens (may stay on device)."""
        self.counters["completions_generated"] += completions
        self._tokens = self._tokens + tokens
        self._step_tokens = self._step_tokens + tokens

    def sample(self, step: int, rollout) -> None:
        """A rollout of ``step`` (after :meth:`step`): its first completion is kept as the example guards
        name, and on a sampling step a few prompts' completions (:class:`~rlpost.samples.CompletionSamples`)."""
        self.example = (rollout.prompts[0], rollout.completions[0])
        self.samples.take(step, self.counters["rollouts"], rollout)

    def step(self, step: int, metrics: dict[str, Tensor | float]) -> None:
        """One training step's metrics (0-d tensors on any device, or floats); buffered until :meth:`flush`."""
        now = self.clock()
        phases = dict(self._step_phases)
        if self._step_t0 is not None:
            phases["other"] = max(now - self._step_t0 - sum(phases.values()), 0.0)
        for name, dt in phases.items():
            self.phase_s[name] = self.phase_s.get(name, 0.0) + dt
        self._step_phases = dict.fromkeys(PHASES, 0.0)
        self.counters["rollouts"] += 1
        self._sample_memory = self.phase_memory_every > 0 and self.counters["rollouts"] % self.phase_memory_every == 0
        if phases.get("generation"):  # completion tokens per second of generation, this step
            metrics = {**metrics, "train/completion_tokens_per_s": self._step_tokens / phases["generation"]}
        self._step_tokens = 0
        on_device = {k: v.detach().float().reshape(()) for k, v in metrics.items() if isinstance(v, Tensor)}
        on_host = {k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor)}
        parts = [torch.stack(list(on_device.values()))] if on_device else []
        if on_host:  # one small host-to-device copy, so that a mean over ranks covers these too
            device = parts[0].device if parts else self._device
            parts.append(torch.tensor(list(on_host.values()), dtype=torch.float32, device=device))
        values = torch.cat(parts) if parts else torch.zeros(0)
        self._buffer.append((step, self.wall_s(), phases, (*on_device, *on_host), values))
        self._step_t0 = self.clock()  # buffering the metrics is this step's logging (the row holds ``phases``)
        phases["logging"] = phases.get("logging", 0.0) + self._step_t0 - now
        self.phase_s["logging"] = self.phase_s.get("logging", 0.0) + self._step_t0 - now

    def flush(self, reduce: Callable[[Tensor], Tensor] | None = None, loggers: Iterable = ()) -> list[dict]:
        """Read the buffered steps back (one transfer; ``reduce`` e.g. a mean over ranks), append them to
        the history and hand them to ``loggers``. Returns the new rows."""
        if not self._buffer:
            return []
        with self.phase("logging"):
            rows = []
            for keys, group in _consecutive(self._buffer):
                values = torch.stack([v for *_, v in group])
                if reduce is not None and values.numel():
                    values = reduce(values)
                for (step, wall, phases, _, _), row in zip(group, values.tolist()):
                    rows.append({"step": step, "wall_s": wall, **dict(zip(keys, row)),
                                 **{f"time/{k}_s": v for k, v in phases.items()}})
            self._buffer.clear()
            self.history.extend(rows)
            for logger in loggers:
                write_rows(logger, rows)
        return rows

    def evaluation(self, step: int, result: dict, loggers: Iterable = (), samples: list[dict] = ()) -> dict:
        """Record one held-out evaluation (flat ``name -> number`` plus optional dicts) and log it under ``val/``;
        its greedy completions ``samples`` go to ``eval_completions.jsonl`` and TensorBoard."""
        self.write_eval_samples("fit", step, samples, loggers)
        row = {"step": step, "wall_s": self.wall_s(), **result}
        if self.val_history and self.val_history[-1]["step"] == step:
            self.val_history[-1] = row  # the same step evaluated twice (validation, then end of fit): keep the last
        else:
            self.val_history.append(row)
        flat = flatten_metrics({k: v for k, v in result.items() if k != "n"}, "val/")
        for logger in loggers:
            logger.log_metrics(flat, step=step)
        return row

    def held_out_result(self, stage: str, step: int, result: dict, samples: list[dict] = (), **fields) -> Path | None:
        """``rlpost validate`` / ``test``: write the evaluation to ``<run>/<stage>.json`` and its greedy
        completions to ``eval_completions.jsonl`` (rank 0); returns the path."""
        self.write_eval_samples(stage, step, samples)
        if not (self._is_zero and self.log_dir):
            return None
        path = self.log_dir / f"{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stage": stage, "step": step, **fields, **result}, indent=2, default=str))
        print(f"[rlpost] {stage}: {result['n']} prompts; metrics written to {path}")
        return path

    def write_eval_samples(self, stage: str, step: int, samples: list[dict], loggers: Iterable = ()) -> None:
        if self._is_zero and self.log_dir and samples:
            append_jsonl(self.log_dir / "eval_completions.jsonl", ({"stage": stage, "step": step, **s} for s in samples))
            log_text(loggers, "val/completions", list(samples), step)

    def wall_s(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    # ================================================================== summary
    def peak_memory(self) -> int:
        return max(self._peak, peak_memory_bytes(self._device))

    def completion_tokens(self) -> int:
        return int(self._tokens)

    def summary(self, **fields: Any) -> dict:
        """The summary of the run so far: the record's own figures, the first and last evaluation as
        ``<field>_before`` / ``<field>_after``, then ``fields`` (which win)."""
        gen_s = sum(self.phase_s.get(p, 0.0) for p in ROLLOUT_PHASES)
        train_s = sum(self.phase_s.values()) - gen_s - self.phase_s.get("logging", 0.0)
        tokens = self.completion_tokens()
        out: dict[str, Any] = {"seed": _seed(), "rollouts": self.counters["rollouts"]}
        if "replayed_rollouts" in self.counters:  # served from files by rlpost.replay, not generated by this run
            out["replayed_rollouts"] = self.counters["replayed_rollouts"]
        if self.val_history:
            for when, row in (("before", self.val_history[0]), ("after", self.val_history[-1])):
                out.update({summary_name(k, when): v for k, v in row.items() if k not in ("step", "wall_s", "n")})
            if "n" in self.val_history[-1]:
                out["eval_prompts"] = self.val_history[-1]["n"]
        measure = ("cuda max_memory_allocated" if self._device.type == "cuda" else
                   "peak RSS (VmHWM) since training start" + ("" if self._peak_reset else " (reset unavailable)"))
        out.update(
            peak_memory_bytes=self.peak_memory(), peak_memory_measure=measure,
            memory_breakdown=self.breakdown or breakdown_of({}),
            generation_s=gen_s, training_s=train_s,
            phases={name: {"s": s, "peak_memory_bytes": self.phase_peak.get(name)} for name, s in self.phase_s.items()},
            completion_tokens=tokens, completion_tokens_per_s=tokens / max(self.phase_s.get("generation", 0.0), 1e-9),
            completions_generated=self.counters["completions_generated"],
            history=self.history, val_history=self.val_history,
        )
        out.update(fields)
        return out

    def write(self, directory: str | Path, summary: dict) -> Path:
        """Write ``summary.json`` into ``directory`` and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "summary.json"
        path.write_text(json.dumps(summary, indent=2, default=str))
        self.summary_path, self.summary_data = path, summary
        return path

    # ================================================================== Lightning
    def setup(self, trainer, pl_module, stage: str) -> None:
        self.log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks
        self._is_zero = trainer.is_global_zero

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._device = pl_module.device
        self._trainer = trainer

    def on_train_start(self, trainer, pl_module) -> None:
        if self.samples.every is None:
            self.samples.every = trainer.log_every_n_steps
        # a resumed run keeps the evaluation of its original start, and makes up the one that followed its
        # checkpoint (Lightning saves before that validation and does not repeat it)
        last = self.val_history[-1]["step"] if self.val_history else None
        if last is None or (last != trainer.global_step and validation_was_due(trainer)):
            self.evaluation(trainer.global_step, pl_module.held_out_evaluation(), rank_zero_loggers(trainer),
                            pl_module.held_out_samples())
        self.start(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.breakdown is None:  # after the first update: gradients and optimizer state exist
            self.breakdown = breakdown_of(pl_module.accounted_models(), _optimizers(trainer))
        if self.counters["rollouts"] % max(trainer.log_every_n_steps, 1) == 0:
            self._flush(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush(trainer)
        self.evaluation(trainer.global_step, pl_module.held_out_evaluation(), rank_zero_loggers(trainer),
                        pl_module.held_out_samples())
        peak, generated = self.peak_memory(), self.counters["completions_generated"]
        if trainer.world_size > 1:
            reduce = trainer.strategy.reduce
            peak = int(reduce(torch.tensor(float(peak), device=pl_module.device), reduce_op="max"))
            generated = int(reduce(torch.tensor(float(generated), device=pl_module.device), reduce_op="sum"))
        log_dir = self.log_dir
        model_dir = pl_module.export_model(log_dir) if self.save_model else None  # every rank: a sharded policy is gathered
        if not trainer.is_global_zero:
            return
        fields = dict(pl_module.summary_fields(), steps=trainer.global_step, peak_memory_bytes=peak,
                      completions_generated=generated, strategy=type(trainer.strategy).__name__,
                      precision=str(trainer.precision), world_size=trainer.world_size)
        if model_dir is not None:
            fields["model_dir"] = str(model_dir)
        path = self.write(log_dir, self.summary(**fields))
        print(pl_module.summary_line(self.summary_data) + f"; summary: {path}")

    def _flush(self, trainer, pl_module=None) -> list[dict]:
        """Flush (mean over ranks); with ``pl_module`` (in ``on_train_batch_end``, where a module may log), hand
        it every row it has not seen yet (``on_history``: the guards read them there), also rows flushed
        earlier by a checkpoint."""
        reduce = None
        if trainer.world_size > 1:
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="mean")  # noqa: E731
        rows = self.flush(reduce, rank_zero_loggers(trainer))
        samples = self.samples.rows()
        if trainer.is_global_zero and samples:
            append_jsonl(self.log_dir / "completions.jsonl", samples)
            for step in dict.fromkeys(r["step"] for r in samples):
                log_text(rank_zero_loggers(trainer), "completions", [r for r in samples if r["step"] == step], step)
        self._unseen.extend(rows)
        if pl_module is not None and self._unseen:
            unseen, self._unseen = self._unseen, []
            pl_module.on_history(unseen)
        return rows

    def state_dict(self) -> dict:
        # Lightning collects a callback's state before its on_save_checkpoint: flush here, so that the history
        # in the checkpoint is complete (every rank saves together: the reduce inside is safe)
        if self._trainer is not None and self._trainer.state.fn == "fit":
            self._flush(self._trainer)
        return {"history": self.history, "val_history": self.val_history, "phase_s": self.phase_s,
                "phase_peak": self.phase_peak, "counters": self.counters, "breakdown": self.breakdown,
                "completion_tokens": self.completion_tokens(), "elapsed_s": self.wall_s(), "peak": self.peak_memory()}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.val_history = list(state["history"]), list(state["val_history"])
        self.phase_s, self.phase_peak = dict(state["phase_s"]), dict(state["phase_peak"])
        self.counters, self.breakdown = dict(state["counters"]), state["breakdown"]
        self._tokens, self._elapsed_before, self._peak = state["completion_tokens"], state["elapsed_s"], state["peak"]
        self._sample_memory = self.phase_memory_every > 0 and self.counters["rollouts"] % self.phase_memory_every == 0


def summary_name(key: str, when: str) -> str:
    """An evaluation field's name in the summary: ``reward`` -> ``reward_before``, ``accuracy_sampled`` ->
    ``accuracy_before_sampled``, and the greedy accuracy is the headline: ``accuracy_greedy`` -> ``accuracy_before``."""
    head, _, tail = key.partition("_")
    return f"{head}_{when}" + (f"_{tail}" if tail and tail != "greedy" else "")


class RecordedModule:
    """Views of a module's run record (``self.record``): ``history``, ``summary``, ``summary_path``."""

    def held_out_samples(self) -> list[dict]:
        """The completions of the last held-out evaluation, for ``eval_completions.jsonl`` (default: none)."""
        return []

    @property
    def history(self) -> list[dict]:
        return self.record.history

    @property
    def summary(self) -> dict:
        return self.record.summary_data

    @property
    def summary_path(self) -> Path | None:
        return self.record.summary_path


def _consecutive(buffer: list) -> list[tuple[tuple[str, ...], list]]:
    """Buffered steps grouped into runs that share the same metric names."""
    groups: list[tuple[tuple[str, ...], list]] = []
    for item in buffer:
        if not groups or groups[-1][0] != item[3]:
            groups.append((item[3], []))
        groups[-1][1].append(item)
    return groups


def _optimizers(trainer) -> list[torch.optim.Optimizer]:
    return [getattr(o, "optimizer", o) for o in trainer.optimizers]


def _seed() -> int | None:
    return int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None
