"""Trainers: importing this package registers every built-in trainer."""
from moodcat_plugin.trainers.base_trainer import BaseTrainer, ClassifierTrainer

__all__ = ["BaseTrainer", "ClassifierTrainer"]
from moodcat_plugin.trainers.mcd_trainer import MCDTrainer  # noqa: E402,F401
from moodcat_plugin.trainers.oe_trainer import OETrainer  # noqa: E402,F401
from moodcat_plugin.trainers.udg_trainer import UDGTrainer  # noqa: E402,F401
from moodcat_plugin.trainers import moodcat_gan_trainer, moodcat_cb_trainer  # noqa: F401
