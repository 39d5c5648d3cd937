"""The run record's phases, clock and logger writes."""

import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlpost.loggers import write_rows
from rlpost.run_record import RunRecord


class FakeClock:
    """A clock that advances only when told: phases get exact durations."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_phases_nest_and_the_rest_of_a_step_is_other_on_the_records_clock():
    record, clock = RunRecord(), FakeClock()
    record.clock = clock
    record.start(torch.device("cpu"))
    with record.phase("generation"):
        clock.now += 3.0
        with record.phase("scoring"):  # nested: generation is charged only its own time
            assert record.open_phase() == "scoring"
            clock.now += 1.0
    assert record.open_phase() is None
    clock.now += 0.5  # outside any phase
    record.step(1, {"train/reward": torch.tensor(0.25)})
    row = record.flush()[0]
    assert (row["time/generation_s"], row["time/scoring_s"], row["time/other_s"]) == (3.0, 1.0, 0.5)
    assert row["time/logging_s"] == 0.0  # the fake clock did not move while the metrics were buffered
    assert record.phase_s["generation"] == 3.0 and record.summary()["generation_s"] == 4.0


def test_buffering_a_steps_metrics_is_charged_to_its_logging():
    record = RunRecord()
    ticks = iter(range(100))
    record.clock = lambda: float(next(ticks))  # every reading advances one second
    record.start(torch.device("cpu"))  # reads 0
    record.step(1, {"train/reward": torch.tensor(0.5)})  # reads 1 (step end), then 2 (after buffering)
    row = record.flush()[0]
    assert row["time/other_s"] == 1.0 and row["time/logging_s"] >= 1.0


def test_tensorboard_gets_one_event_per_row_with_the_same_scalars(tmp_path):
    rows = [{"step": s, "wall_s": 0.1, "train/reward": 0.5 + s, "time/generation_s": 0.25 * s} for s in (1, 2)]
    tb = TensorBoardLogger(tmp_path / "tb", name="")
    write_rows(tb, rows)
    tb.experiment.flush()
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["time/generation_s", "train/reward"]
    assert [(e.step, e.value) for e in events.Scalars("train/reward")] == [(1, 1.5), (2, 2.5)]
    # any other logger through its own log_metrics
    csv = CSVLogger(tmp_path / "csv", name="")
    write_rows(csv, rows)
    csv.save()
    assert "train/reward" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
