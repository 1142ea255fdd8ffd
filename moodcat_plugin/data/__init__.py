"""Data: in-memory image sets, benchmark definitions and batch sources."""
from moodcat_plugin.data.arrays import ImageArray
from moodcat_plugin.data.benchmark import Benchmark, load_benchmark
from moodcat_plugin.data.loaders import ArrayBatches, ShuffledBatches, denormalize, make_loader

__all__ = ["ImageArray", "Benchmark", "load_benchmark", "ArrayBatches", "ShuffledBatches", "make_loader",
           "denormalize"]
