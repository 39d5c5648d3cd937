"""Scoring: any callable ``f(prompts, completions, **columns) -> list[float | None]`` (TRL's convention)."""

from rlpost.scoring.combine import Scorer, ScorerError, ScorerSet, ScoreResult

__all__ = ["Scorer", "ScorerError", "ScorerSet", "ScoreResult"]
