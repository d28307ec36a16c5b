"""The `dtwinseg` command. Thin wrappers only: each area registers its commands from
``cli/<area>.py``, and heavy imports happen inside the command bodies so that
``dtwinseg --help`` stays instant. Commands may import the workflow packages (data_builders, training,
eval); the library modules of ``dtwinseg`` never do.
"""

from __future__ import annotations

import os
from typing import Any

import click
import typer
from dtwinseg.cli import data, demo, evaluation, perception, reasoning, sft, table4
from typer.core import TyperGroup

DEBUG_ENV = "DTWINSEG_DEBUG"


def debug_enabled() -> bool:
    """True with ``dtwinseg --debug ...`` or DTWINSEG_DEBUG=1: errors then show the full traceback."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


class ErrorBoundary(TyperGroup):
    """The one place where bad input becomes one line: a DataError (ConfigError included: file, field, what
    is wrong) or a missing file prints ``error: ...`` on stderr and exits 2; the traceback only in debug."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from dtwinseg.cli.options import rewrite_deprecated

        return super().parse_args(ctx, rewrite_deprecated(args, warn=lambda m: click.echo(m, err=True)))

    def invoke(self, ctx: click.Context) -> Any:
        from dtwinseg.io import DataError

        try:
            return super().invoke(ctx)
        except (DataError, FileNotFoundError) as e:
            if debug_enabled():
                raise
            msg = " ".join(str(e).split()) or type(e).__name__
            click.echo(f"error: {msg}", err=True)
            ctx.exit(2)


app = typer.Typer(
    name="dtwinseg",
    cls=ErrorBoundary,
    help="Reasoning segmentation through Digital Twins: build twins (SAM + VLM), reason over them with an "
    "LLM, fine-tune it with SFTDT, and evaluate gIoU / cIoU exactly as the reference code.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold API keys
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain text: [q_proj,v_proj] or [default: ...] stay as written
)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (also "
                               f"{DEBUG_ENV}=1); by default bad input prints one line and exits 2."),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command()
def version() -> None:
    """Print the dtwinseg version and the versions of the main dependencies."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    for name in ("dtwinseg", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "segment-anything"):
        try:
            typer.echo(f"{name} {v(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name} (not installed)")


for _module in (data, perception, sft, reasoning, evaluation, demo, table4):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
