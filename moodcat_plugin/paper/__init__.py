"""The MOODCAT paper's tables reproduced from one command each (``scripts/reproduce_paper.py``).

Layered on top of the pipeline (it imports :mod:`moodcat_plugin.pipeline`; nothing below imports
it): :mod:`~moodcat_plugin.paper.spec` reads ``configs/paper/tables.yml`` (published values and
how each row runs), :mod:`~moodcat_plugin.paper.runs` trains and scores runs through the normal
Runner, :mod:`~moodcat_plugin.paper.estimate` predicts wall time from ``configs/paper/costs.yml``,
:mod:`~moodcat_plugin.paper.tables` writes ``table<N>.{md,csv}``, :mod:`~moodcat_plugin.paper.osr`
holds the open-set splits of Table 3, :mod:`~moodcat_plugin.paper.cli` is the command.
"""
