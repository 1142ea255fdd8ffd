"""Trainers: importing this package registers every built-in trainer."""
from moodcat_plugin.trainers.base_trainer import BaseTrainer, ClassifierTrainer

__all__ = ["BaseTrainer", "ClassifierTrainer"]
