"""Overlays: an image with the twin's objects outlined, the chosen ones filled, their ids drawn, optionally
the ground truth's outline and a caption band below the image (used by ``dtwinseg segment``, whose caption
is the query and the answer, and the eval report's worst cases)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from dtwinseg.twin import DigitalTwin

CHOSEN_RGB = (230, 40, 40)
OTHER_RGB = (250, 250, 250)
GT_RGB = (40, 220, 60)


def load_rgb(path: str | os.PathLike | None, height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8 image resized to (height, width); a grey canvas if the file is missing/unreadable."""
    try:
        img = Image.open(path).convert("RGB") if path else None
    except OSError:
        img = None
    if img is None:
        return np.full((height, width, 3), 128, dtype=np.uint8)
    if img.size != (width, height):
        img = img.resize((width, height))
    return np.asarray(img, dtype=np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a bool H x W mask (mask minus its 4-neighbour erosion)."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def render_overlay(image: np.ndarray, twin: DigitalTwin, chosen: Sequence[int],
                   gt_mask: np.ndarray | None = None, alpha: float = 0.5, caption: str | None = None) -> Image.Image:
    """The overlay as a PIL image.

    image: H x W x 3 uint8 (the twin's size). chosen: ids filled in red (alpha-blended), every other
    object outlined in white; ids are drawn at each object's box centre; ``gt_mask`` (0/1/255) outlined
    in green; ``caption`` (lines of text) is written in a white band added below the image (the image is
    then taller than the twin).
    """
    out = np.asarray(image, dtype=np.float32).copy()
    masks = twin.masks()
    chosen_set = {int(i) for i in chosen}
    for k, obj in enumerate(twin.objects):
        m = masks[k]
        if obj.id in chosen_set:
            out[m] = (1 - alpha) * out[m] + alpha * np.array(CHOSEN_RGB, dtype=np.float32)
            out[outline(m)] = CHOSEN_RGB
        else:
            out[outline(m)] = OTHER_RGB
    if gt_mask is not None:
        out[outline(np.asarray(gt_mask) == 1)] = GT_RGB
    pil = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for obj in twin.objects:
        x0, y0, x1, y1 = obj.bbox
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        colour = CHOSEN_RGB if obj.id in chosen_set else (0, 0, 0)
        text = str(obj.id)
        w = 6 * len(text) + 2
        draw.rectangle([cx - w / 2, cy - 6, cx + w / 2, cy + 6], fill=(255, 255, 255))
        draw.text((cx - w / 2 + 1, cy - 6), text, fill=colour)
    return with_caption(pil, caption) if caption else pil


LINE_HEIGHT, CHAR_WIDTH = 12, 6  # PIL's default bitmap font


def with_caption(img: Image.Image, caption: str) -> Image.Image:
    """``img`` with a white band below it holding ``caption`` (wrapped to the image's width)."""
    width = max(img.width, 20 * CHAR_WIDTH)
    lines = [ln for para in str(caption).splitlines()
             for ln in (textwrap.wrap(para, max(10, (width - 8) // CHAR_WIDTH)) or [""])]
    band = Image.new("RGB", (width, img.height + LINE_HEIGHT * len(lines) + 8), (255, 255, 255))
    band.paste(img, (0, 0))
    draw = ImageDraw.Draw(band)
    for k, line in enumerate(lines):
        draw.text((4, img.height + 4 + k * LINE_HEIGHT), line, fill=(0, 0, 0))
    return band


def segment_caption(query: str, ids: Sequence[int], status: str | None = None) -> str:
    """The caption of a ``dtwinseg segment`` overlay: the query and the answer (ids, parse status)."""
    answer = f"answer: ids {list(ids)}" + (f" (parse {status})" if status and status != "ok" else "")
    return f"query: {' '.join(str(query).split())}\n{answer}"


def mask_png(mask: np.ndarray) -> Image.Image:
    """A bool / 0-1 H x W mask as an 8-bit PNG image (0 / 255)."""
    return Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255)
