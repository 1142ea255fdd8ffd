#!/usr/bin/env python
"""Reproduce one table of the MOODCAT paper; see ``--help`` and PAPER.md (implementation: moodcat_plugin.paper)."""
import sys

from moodcat_plugin.paper.cli import main

if __name__ == "__main__":
    sys.exit(main())
