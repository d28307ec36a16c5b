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
    is wrong) or a missing file prints ``error: ...`` on stderr and exits 2; an error of the machine (disk
    full, read-only file system, permission, too many open files: any other OSError) prints one line naming
    the path and exits 1. The traceback only in debug; no line shows a live secret."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from dtwinseg.cli.options import rewrite_deprecated

        return super().parse_args(ctx, rewrite_deprecated(args, warn=lambda m: click.echo(m, err=True)))

    def invoke(self, ctx: click.Context) -> Any:
        from dtwinseg.io import DataError, describe_os_error, escaped_surrogates
        from dtwinseg.redaction import redact_text

        escaped_before = escaped_surrogates()
        try:
            return super().invoke(ctx)
        except (DataError, FileNotFoundError) as e:
            if debug_enabled():
                raise
            msg = " ".join(redact_text(str(e)).split()) or type(e).__name__
            click.echo(f"error: {msg}", err=True)
            ctx.exit(2)
        except OSError as e:
            if debug_enabled():
                raise
            click.echo(f"error: {' '.join(redact_text(describe_os_error(e)).split())}", err=True)
            ctx.exit(1)
        finally:
            if escaped_surrogates() > escaped_before:
                click.echo(f"note: {escaped_surrogates() - escaped_before} lone surrogate character(s) (text "
                           "that is not valid Unicode, e.g. undecodable bytes) were written escaped as \\udXXXX",
                           err=True)


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


class _SafeStream:
    """A text stream that never raises on text it cannot encode (lone surrogates are written escaped) and
    never shows a live secret (:mod:`dtwinseg.redaction`); everything else is the wrapped stream's."""

    def __init__(self, stream: Any):
        self._stream = stream
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass

    def write(self, text: str) -> int:
        from dtwinseg.redaction import redact_text

        self._stream.write(redact_text(text) if isinstance(text, str) else text)
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main() -> None:
    import sys

    sys.stdout, sys.stderr = _SafeStream(sys.stdout), _SafeStream(sys.stderr)
    app()


if __name__ == "__main__":
    main()
