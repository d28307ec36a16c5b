"""The `dtwinseg` command. Thin wrappers only: each area registers its commands from
``cli/<area>.py``, and heavy imports happen inside the command bodies so that
``dtwinseg --help`` stays instant. Commands may import the workflow packages (data_builders, training,
eval); the library modules of ``dtwinseg`` never do.
"""

from __future__ import annotations

import typer

from cli import data, demo, evaluation, perception, reasoning, sft

app = typer.Typer(
    name="dtwinseg",
    help="Reasoning segmentation through Digital Twins: build twins (SAM + VLM), reason over them with an "
    "LLM, fine-tune it with SFTDT, and evaluate gIoU / cIoU exactly as the reference code.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold API keys
    add_completion=False,
)



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


for _module in (data, perception, sft, reasoning, evaluation, demo):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
