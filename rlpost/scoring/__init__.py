"""Scoring: any callable ``f(prompts, completions, **columns) -> list[float | None]`` (TRL's convention)."""

from rlpost.scoring.combine import Scorer, ScorerError, ScorerSet, ScoreResult, check_weights, run_scorer
from rlpost.scoring.reward_model import RewardModel, RewardModelScorer, bradley_terry_loss

__all__ = ["RewardModel", "RewardModelScorer", "Scorer", "ScorerError", "ScorerSet", "ScoreResult", "bradley_terry_loss",
           "check_weights", "run_scorer"]
