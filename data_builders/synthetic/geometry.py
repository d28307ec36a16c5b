"""Geometry of the synthetic scenes: unit polygons per category and the polygon <-> mask conversions
(rasterised as the ReasonSeg reference does: int32 points, outline + fill)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def _ngon(n: int, r: float = 1.0, phase: float = -math.pi / 2, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _star() -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def shape_polygons(category: str) -> list[list[np.ndarray]]:
    """Parts (each a list of polygons in unit coordinates) of one category."""
    if category == "circle":
        return [[_ngon(40)]]
    if category == "square":
        return [[_rect(-0.85, -0.85, 0.85, 0.85)]]
    if category == "triangle":
        return [[_ngon(3, 1.0)]]
    if category == "star":
        return [[_star()]]
    if category == "hexagon":
        return [[_ngon(6, 1.0, 0.0)]]
    if category == "cup":
        body = np.array([[-0.7, -0.8], [0.45, -0.8], [0.35, 0.8], [-0.6, 0.8]])
        return [[body, _rect(0.35, -0.45, 0.85, -0.25), _rect(0.65, -0.45, 0.85, 0.35), _rect(0.3, 0.15, 0.85, 0.35)]]
    if category == "chair":
        return [[_rect(-0.7, -1.0, -0.45, 1.0), _rect(-0.7, -0.05, 0.7, 0.15), _rect(0.45, 0.15, 0.7, 1.0)]]
    if category == "sun":
        rays = []
        for k in range(8):
            a = 2 * math.pi * k / 8
            tip = (math.cos(a), math.sin(a))
            left = (0.55 * math.cos(a - 0.25), 0.55 * math.sin(a - 0.25))
            right = (0.55 * math.cos(a + 0.25), 0.55 * math.sin(a + 0.25))
            rays.append(np.array([left, tip, right]))
        return [[_ngon(28, 0.6), *rays]]
    if category == "umbrella":
        t = np.linspace(math.pi, 2 * math.pi, 20)
        canopy = np.stack([np.cos(t), 0.8 * np.sin(t)], 1)
        return [[canopy, _rect(-0.07, -0.05, 0.07, 0.9), _rect(-0.3, 0.8, 0.07, 0.95)]]
    if category == "house":
        return [[_rect(-0.75, -0.1, 0.75, 1.0)], [np.array([[-0.95, -0.1], [0.0, -1.0], [0.95, -0.1]])],
                [_rect(-0.2, 0.35, 0.2, 1.0)]]
    if category == "tree":
        return [[_rect(-0.15, 0.2, 0.15, 1.0)], [_ngon(30, 0.65, cy=-0.3)]]
    if category == "car":
        body = np.array([[-1.0, 0.0], [-0.55, 0.0], [-0.35, -0.45], [0.35, -0.45], [0.55, 0.0], [1.0, 0.0],
                         [1.0, 0.45], [-1.0, 0.45]])
        return [[body], [_ngon(20, 0.27, cx=-0.55, cy=0.5)], [_ngon(20, 0.27, cx=0.55, cy=0.5)]]
    raise ValueError(f"unknown category {category!r}")


def rasterise_polygons(polys: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Bool H x W mask of polygons drawn as the ReasonSeg reference does (int32 points, outline + fill)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    for p in polys:
        pts = np.asarray(p, dtype=np.float64).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], True, 1, 1)
        cv2.fillPoly(canvas, [pts], 1)
    return canvas.astype(bool)


def mask_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outer contours of a bool mask as polygons [[x, y], ...] (pixel centres, so they rasterise back)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(float).tolist()
        if len(pts) >= 1:
            out.append(pts)
    return out



def polygon_roundtrip_iou(mask: np.ndarray) -> float:
    """IoU of a mask with the rasterised outer contours of itself (1.0: expressible without holes)."""
    back = rasterise_polygons([np.asarray(p) for p in mask_polygons(mask)], *mask.shape)
    inter = float((back & mask).sum())
    union = float((back | mask).sum())
    return 1.0 if union == 0 else inter / union

