"""Workflows: drivers that chain the public commands (build data, train, evaluate) into one job.

They sit between ``eval`` and the CLI: ``demo`` (``dtwinseg demo``, ``make demo``), ``paper`` (``dtwinseg
demo --preset paper``), ``table4`` (``dtwinseg table4``, the paper's ablation rows) and ``publish``
(``dtwinseg publish``: a trained model's folder and card from dtwinseg.training.hub, with the evaluation
results of a metrics.json). Library, training and evaluation code never import them.
"""
