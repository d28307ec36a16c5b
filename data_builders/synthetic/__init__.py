"""Synthetic reasoning-segmentation scenes: a seeded, fully labelled benchmark that needs no download.

Each scene is a small RGB image (default 256 x 256) with 3-12 objects drawn as polygons in painter's
order: geometric shapes, everyday icons (cup, chair, sun, umbrella) and composite objects with named
parts (house = walls + roof + door, tree = trunk + crown, car = body + wheels), in several colours, sizes
and textures, partly occluding each other. Every object's *visible* mask follows from the painter's order.

Each scene gets one query, produced by a small program over the scene and tagged with the reasoning
dimension it exercises:

    recognition   "the red circle"                           granularity 1 (object)
    function      "something to drink from"                  granularity 1
    spatial       "the star left of the blue square"         granularity 1
    geometric     "the largest circle", "the leftmost cup"   granularity 1
    multi_step    "the cup nearest to the largest star",
                  "the kind of thing there are exactly 3 of" granularity 1 / 0
    group         "all the green things"                     granularity 0 (group)
    part          "the roof of the house on the left"        granularity 2 (part)

Short phrases and long sentences both occur (``is_sentence``). The output is a ReasonSeg-format folder
(``<split>/<name>.jpg`` + ``<name>.json`` with target polygons, ``text``, ``is_sentence``, ``dimension``,
``granularity``, and the ``program`` that chose the targets) plus ``<name>.instances.json`` with every
instance mask as COCO RLE and its description, for the ``oracle`` perception source:

    {"objects": [{"rle": {...}, "semantic": "a small green circle", "level": 1, "parent": null,
                  "category": "circle", "colour": "green", ...}, ...],
     "targets": [indices into objects]}

Level-1 objects come first (indices 0..n-1), then the parts of composite objects (level 2, ``parent`` =
the object index). Target polygons are the outer contours of the visible masks, so the reference
rasteriser (cv2 outline + fill, int32 points) reproduces them exactly; scenes whose visible masks would
need holes are re-drawn.

Modules: ``config`` (vocabulary, SynthConfig), ``geometry`` (unit polygons, polygon <-> mask),
``rendering`` (one scene, painter's order, instances), ``queries`` (one program per dimension),
``writer`` (seeded samples, the ReasonSeg-format folder, the ``synthetic:`` reader).
"""

from dtwinseg.data_builders.synthetic.config import DIMENSIONS, SPLITS, SynthConfig
from dtwinseg.data_builders.synthetic.geometry import mask_polygons, rasterise_polygons
from dtwinseg.data_builders.synthetic.queries import PROGRAMS, Query
from dtwinseg.data_builders.synthetic.rendering import Scene, SceneObject, render_scene
from dtwinseg.data_builders.synthetic.writer import (
    SynthSample,
    generate_sample,
    generate_samples,
    open_synthetic,
    sample_rng,
    write_dataset,
    write_sample,
)

__all__ = [
    "DIMENSIONS", "PROGRAMS", "SPLITS", "Query", "Scene", "SceneObject", "SynthConfig", "SynthSample",
    "generate_sample", "generate_samples", "mask_polygons", "open_synthetic", "rasterise_polygons", "render_scene", "sample_rng",
    "write_dataset", "write_sample",
]
