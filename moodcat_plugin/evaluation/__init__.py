"""Evaluation: metrics, the evaluator and leaderboards."""
from moodcat_plugin.evaluation.evaluator import Evaluator, ScoreSet
from moodcat_plugin.evaluation.leaderboard import write_leaderboard
from moodcat_plugin.evaluation.metrics import FPR_CONVENTIONS, accuracy, ood_metrics

__all__ = ["Evaluator", "ScoreSet", "write_leaderboard", "FPR_CONVENTIONS", "accuracy", "ood_metrics"]
