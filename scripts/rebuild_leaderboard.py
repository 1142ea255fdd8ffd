#!/usr/bin/env python
"""Rebuild a leaderboard from saved per-sample scores, e.g. with the other FPR@95 convention:

    python scripts/rebuild_leaderboard.py results/cifar10 --fpr id_positive
"""
import sys

from moodcat_plugin.evaluation.leaderboard import main

if __name__ == "__main__":
    sys.exit(main())
