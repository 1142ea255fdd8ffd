#!/usr/bin/env python
"""Evaluate OOD detectors side by side; see ``--help`` (implementation: moodcat_plugin.cli)."""
import sys

from moodcat_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main())
