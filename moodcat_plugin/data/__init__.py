"""Data: in-memory image sets, benchmark definitions and loaders."""
from moodcat_plugin.data.arrays import ImageArray
from moodcat_plugin.data.benchmark import Benchmark, load_benchmark
from moodcat_plugin.data.loaders import ArrayDataset, denormalize, make_loader

__all__ = ["ImageArray", "Benchmark", "load_benchmark", "ArrayDataset", "make_loader", "denormalize"]
