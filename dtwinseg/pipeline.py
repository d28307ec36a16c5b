"""Segmenter = perception (image + query -> DigitalTwin) + reasoning (twin + query -> ids) -> mask.

A pipeline YAML has two sections::

    perception:   # dtwinseg.perception.builder.PerceptionConfig (SAM checkpoint, VLM, thresholds)
      ...
    reasoning:    # dtwinseg.reasoning.ReasoningConfig (format, backend, model / adapter, ...)
      format: select
      backend: openai
      model: gpt-4o

Either section may instead be the path of a perception / reasoning YAML, relative to the pipeline file
(``perception: ../perception/sam_vith_gpt4o.yaml``), so recipes/pipeline/*.yaml reuse the shipped configs.
This is what ``dtwinseg segment IMAGE "QUERY" --config pipeline.yaml`` calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dtwinseg.io import DataError, atomic_write_bytes, encode_text, load_yaml, remove_stale_temps, valid_text
from dtwinseg.reasoning import Reasoner, ReasoningConfig, ReasoningOutput, build_reasoner
from dtwinseg.twin import DigitalTwin


class TwinSource(Protocol):
    """Perception: anything that builds a twin for an image and a query (TwinBuilder does)."""

    def build(self, image: Any, query: str, image_id: str) -> DigitalTwin: ...


@dataclass
class Segmentation:
    """Result of one query: the twin, the reasoning output and the H x W bool mask (union of ids)."""

    twin: DigitalTwin
    output: ReasoningOutput
    mask: np.ndarray

    def save(self, out: str | os.PathLike, image: np.ndarray | None = None) -> dict[str, Path]:
        """Write twin.json, reasoning.txt, overlay.png and mask.png under ``out`` (each atomically).

        Every file's content is rendered before the first is written (text of any str: secrets redacted,
        lone surrogates escaped; :func:`dtwinseg.io.encode_text`), and mask.png, the result, is written last:
        a failure leaves either the earlier result untouched or a complete new one, never a mask without
        its twin."""
        import io

        from dtwinseg.redaction import redact_text
        from dtwinseg.visualize import mask_png, render_overlay, segment_caption

        def png(img: Any) -> bytes:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()

        p = self.output.parse
        lines = [f"query: {self.twin.query}", f"format: {self.output.format_name}", f"ids: {self.output.ids}",
                 f"parse: {p.status}" + (f" ({'; '.join(p.notes)})" if p.notes else "")]
        if self.output.scores is not None:
            lines.append(f"scores: {self.output.scores}")
        if self.output.error:
            lines.append(f"error: {self.output.error}")
        lines += ["", "--- model output ---", self.output.text]
        base = image if image is not None else np.full((self.twin.height, self.twin.width, 3), 128, np.uint8)
        caption = valid_text(redact_text(segment_caption(self.twin.query or "", self.output.ids, p.status)))
        contents = {"twin.json": encode_text(self.twin.to_json() + "\n"),
                    "reasoning.txt": encode_text("\n".join(lines) + "\n"),
                    "overlay.png": png(render_overlay(base, self.twin, self.output.ids, caption=caption)),
                    "mask.png": png(mask_png(self.mask))}
        out = Path(out)
        remove_stale_temps(out)
        written = {name: atomic_write_bytes(out / name, data) for name, data in contents.items()}
        return {name: written[name] for name in ("mask.png", "overlay.png", "twin.json", "reasoning.txt")}


class Segmenter:
    """Perception + reasoning. ``perception`` may be None when twins are given to :meth:`segment_twin`."""

    def __init__(self, perception: TwinSource | None, reasoner: Reasoner):
        self.perception = perception
        self.reasoner = reasoner

    @classmethod
    def from_config(cls, path: str | os.PathLike, *, with_perception: bool = True,
                    reasoning_overrides: dict | None = None) -> Segmenter:
        """Build from a pipeline YAML (sections ``perception`` and ``reasoning``, e.g. recipes/pipeline/).

        ``with_perception=False`` builds the reasoning stage only (for prebuilt twins); ``reasoning_overrides``
        replaces fields of the reasoning config (e.g. ``{"format_name": "sftdt"}``)."""
        data = load_yaml(path)
        data = {k: pipeline_section(v, path, k) if k in ("perception", "reasoning") else v for k, v in data.items()}
        if not isinstance(data.get("reasoning"), dict):
            raise DataError(path, "reasoning", "missing: the pipeline config needs a reasoning section")
        reasoning = ReasoningConfig.from_dict(data["reasoning"], path=path)
        if reasoning_overrides:
            reasoning = reasoning.replace(**reasoning_overrides)
        perception = None
        if with_perception:
            if "perception" not in data:
                raise DataError(path, "perception", "missing (or pass a prebuilt twin with --twin)")
            perception = build_perception(data["perception"], path)
        return cls(perception, build_reasoner(reasoning))

    def segment_twin(self, twin: DigitalTwin, query: str) -> Segmentation:
        """Reason over ``twin`` for ``query`` (the model reads it as valid Unicode: :func:`dtwinseg.io.valid_text`;
        the twin keeps the query as given)."""
        out = self.reasoner.reason([(twin, valid_text(query))])[0]
        return Segmentation(twin, out, twin.union(out.ids))

    def segment(self, image: Any, query: str, image_id: str = "image") -> Segmentation:
        """image: H x W x 3 uint8 array (or whatever the perception backend accepts)."""
        if self.perception is None:
            raise ValueError("this Segmenter has no perception stage; use segment_twin")
        twin = self.perception.build(image, query, image_id)
        if not twin.query:
            twin.query = query
        return self.segment_twin(twin, query)


def pipeline_section(value: Any, path: str | os.PathLike, name: str) -> Any:
    """A pipeline section as a mapping: a string is a YAML file relative to the pipeline file ``path``."""
    if not isinstance(value, str):
        return value
    ref = Path(path).parent / value
    if not ref.is_file():
        raise DataError(path, name, f"{value}: file not found (paths are relative to {Path(path).parent})")
    return load_yaml(ref)


def build_perception(section: Any, path: str | os.PathLike) -> TwinSource:
    """TwinBuilder(PerceptionConfig) from the perception section of a pipeline YAML."""
    from dtwinseg.perception.builder import PerceptionConfig, TwinBuilder

    if not isinstance(section, dict):
        raise DataError(path, "perception", "expected a mapping")
    return TwinBuilder(PerceptionConfig.from_dict(section, path=path))
