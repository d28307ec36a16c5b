"""CLI commands of the reasoning area: segment (see cli/main.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from dtwinseg.cli.options import format_option


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("segment")
    def segment(
        image: Path = typer.Argument(..., help="Image file (jpg / png)."),
        query: str = typer.Argument(..., help="The query, e.g. \"the object used to cut bread\"."),
        config: Path = typer.Option(..., "--config", help="Pipeline YAML with a perception and a reasoning "
                                    "section (see dtwinseg/pipeline.py)."),
        out: Path = typer.Option(Path("segment_out"), "--out", help="Folder for mask.png, overlay.png, "
                                 "twin.json and reasoning.txt."),
        twin: Path | None = typer.Option(None, "--twin", help="Reuse a twin.json instead of running "
                                         "perception (then the config needs only a reasoning section)."),
        format_name: str | None = format_option(),
    ) -> None:
        """Segment one image for one query: perception -> Digital Twin -> LLM reasoning -> mask."""
        import numpy as np
        from PIL import Image

        from dtwinseg.io import DataError
        from dtwinseg.pipeline import Segmenter
        from dtwinseg.twin import DigitalTwin

        try:
            rgb = np.asarray(Image.open(image).convert("RGB"))
        except OSError as e:
            raise DataError(image, None, f"cannot read the image ({e})") from e
        seg = Segmenter.from_config(config, with_perception=twin is None,
                                    reasoning_overrides={"format_name": format_name} if format_name else None)
        if twin:
            tw = DigitalTwin.load(twin)
            if (tw.height, tw.width) != rgb.shape[:2]:
                raise DataError(twin, "height/width", f"twin is {tw.height}x{tw.width}, image is "
                                f"{rgb.shape[0]}x{rgb.shape[1]}")
            tw.query = query
            result = seg.segment_twin(tw, query)
        else:
            result = seg.segment(rgb, query, image_id=image.stem)
        files = result.save(out, rgb)
        p = result.output.parse
        typer.echo(f"ids {result.output.ids} (parse {p.status}); mask covers "
                   f"{100.0 * result.mask.mean():.1f}% of the image")
        for name, path in files.items():
            typer.echo(f"  {name}: {path}")
