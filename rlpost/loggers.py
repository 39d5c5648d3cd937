"""Writing a run's rows to Lightning loggers: history rows as one TensorBoard event each, held-out
results flattened to scalars, and the loggers of rank zero. Imports nothing of rlpost."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger


def write_rows(logger, rows: list[dict]) -> None:
    """History rows to a Lightning logger. A ``TensorBoardLogger`` (without prefix) gets one event per row
    with every scalar in it: its ``log_metrics`` writes one event per scalar, ~10x the CPU (1.1 ms against
    0.11 ms for a row of 35 metrics); TensorBoard reads the same scalars either way."""
    writer = None
    if isinstance(logger, TensorBoardLogger) and not logger._prefix:
        from tensorboard.compat.proto.summary_pb2 import Summary

        writer = logger.experiment._get_file_writer()
    for row in rows:
        metrics = {k: v for k, v in row.items() if k not in ("step", "wall_s")}
        if writer is None:
            logger.log_metrics(metrics, step=row["step"])
        else:
            writer.add_summary(Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]),
                               row["step"])


def flatten_metrics(d: dict, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_metrics(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def rank_zero_loggers(trainer) -> list:
    return list(trainer.loggers) if trainer.is_global_zero else []
