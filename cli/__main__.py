"""``python -m dtwinseg.cli ...`` runs the `dtwinseg` command (what the Makefile uses inside .venv)."""

from dtwinseg.cli.main import main

main()
