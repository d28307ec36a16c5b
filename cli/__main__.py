"""``python -m cli ...`` runs the `dtwinseg` command (what the Makefile uses inside .venv)."""

from cli.main import main

main()
