"""Trainers: importing this package registers every built-in trainer (one per module)."""
from moodcat_plugin.trainers.base_trainer import BaseTrainer, ClassifierTrainer
from moodcat_plugin.trainers.mcd_trainer import MCDTrainer
from moodcat_plugin.trainers.moodcat_cb_trainer import MoodcatCbTrainer
from moodcat_plugin.trainers.moodcat_gan_trainer import MoodcatGANTrainer
from moodcat_plugin.trainers.oe_trainer import OETrainer
from moodcat_plugin.trainers.udg_trainer import UDGTrainer

__all__ = ["BaseTrainer", "ClassifierTrainer", "MCDTrainer", "MoodcatCbTrainer", "MoodcatGANTrainer", "OETrainer",
           "UDGTrainer"]
