"""Workflows: drivers that chain the public commands (build data, train, evaluate) into one job.

They sit between ``eval`` and the CLI: ``demo`` (``dtwinseg demo``, ``make demo``) and ``table4``
(``dtwinseg table4``, the paper's ablation rows). Library and evaluation code never import them.
"""
