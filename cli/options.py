"""Options shared by several commands: one spelling, one help text, one behaviour each.

- ``--strict/--lenient`` (:func:`strict_option`): stop at the first malformed input file, or skip and count
  it. The older spelling ``--no-strict`` still works as a hidden, deprecated alias of ``--lenient``
  (:func:`rewrite_deprecated`, applied by the app before parsing).
- ``--format NAME`` (:func:`format_option`): the reasoning format (eval, segment, build-sft). ``--strategy``,
  its older spelling, is a hidden, deprecated alias (rewritten the same way).
- ``--progress/--no-progress`` (:func:`progress_option`): ``--no-progress`` silences every progress bar of
  the run, the libraries' included (transformers' "Loading weights" / "Writing model shards", datasets,
  huggingface_hub), also in processes the command starts.
- Loss weights (:func:`loss_weight_options`): one ``--w-<kind>`` option per field of
  :class:`dtwinseg.formats.LossWeights`, with its default and help read from the dataclass.

Nothing heavy is imported here: ``dtwinseg --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

# Old spellings that keep working (hidden from --help): old -> current.
DEPRECATED_FLAGS = {"--no-strict": "--lenient", "--strategy": "--format"}


def rewrite_deprecated(args: list[str], warn: Callable[[str], None] | None = None) -> list[str]:
    """``args`` with each deprecated flag (before a ``--``; also as ``--flag=value``) replaced by its current
    spelling; one note each."""
    out, passthrough = [], False
    for a in args:
        if a == "--":
            passthrough = True
        flag, eq, value = a.partition("=")
        if not passthrough and flag in DEPRECATED_FLAGS:
            if warn is not None:
                warn(f"note: {flag} is deprecated; use {DEPRECATED_FLAGS[flag]}")
            a = DEPRECATED_FLAGS[flag] + eq + value
        out.append(a)
    return out


def format_option(help: str = "Override the reasoning format") -> Any:
    """``--format NAME``: a registered reasoning format (dtwinseg.formats), default None (the config's)."""
    return typer.Option(None, "--format", help=f"{help}: select, sftdt, score, compact (any registered in "
                                               "dtwinseg.formats).")


def strict_option(default: bool, *, skipped: str = "malformed dataset files") -> Any:
    """``--strict/--lenient`` with the command's default: strict stops at the first bad file (naming file
    and field), lenient skips and counts each one."""
    return typer.Option(default, "--strict/--lenient",
                        help=f"--strict stops at the first of the {skipped} with its name and field; --lenient "
                             "skips such files and counts them.")


# Environment variables the Hugging Face libraries read for their progress bars (also in child processes).
PROGRESS_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def silence_progress_bars() -> None:
    """Turn off every library progress bar in this process and in the processes it starts."""
    os.environ.update(PROGRESS_ENV)
    if "transformers" in sys.modules:  # read its switch at import: turn it off explicitly when already loaded
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _progress_callback(value: bool) -> bool:
    if value is False:
        silence_progress_bars()
    return value


def progress_option(help: str = "Show a progress bar.") -> Any:
    """``--progress/--no-progress``; ``--no-progress`` also silences the libraries' bars."""
    return typer.Option(True, "--progress/--no-progress", callback=_progress_callback,
                        help=f"{help} --no-progress silences every progress bar, the libraries' too.")


def loss_weight_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--w-<kind>`` options (float, default None = the config's value) for every field of
    :class:`dtwinseg.formats.LossWeights` to a command; the command receives them as ``loss_weights``, a
    dict ``{"w_<kind>": value}`` holding only the options given."""
    from dtwinseg.loss_weights import DEFAULT_LOSS_WEIGHTS, LossWeights

    names = [f"w_{f.name}" for f in dataclasses.fields(LossWeights)]
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name != "loss_weights"]
    hints = {k: v for k, v in func.__annotations__.items() if k != "loss_weights"}
    for f in dataclasses.fields(LossWeights):
        what = f.metadata.get("help", f"{f.name} tokens")
        params.append(inspect.Parameter(
            f"w_{f.name}", inspect.Parameter.KEYWORD_ONLY, annotation=float | None,
            default=typer.Option(None, f"--w-{f.name.replace('_', '-')}", show_default=False,
                                 help=f"Loss weight of {what} [default: {getattr(DEFAULT_LOSS_WEIGHTS, f.name):g}, "
                                      "dtwinseg.formats.LossWeights].")))
        hints[f"w_{f.name}"] = float | None

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        weights = {n: kwargs.pop(n) for n in names if n in kwargs}
        return func(*args, loss_weights={k: v for k, v in weights.items() if v is not None}, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = hints
    return wrapper
