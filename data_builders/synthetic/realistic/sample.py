"""One realistic sample: a scene, its instances worded by the wording model, and one query.

The scene and the query program come from the sample's generator (seed, split, index); the words (the
twin's semantics and the query's phrasing) from generators of their own, keyed by the role as well. So the
seen-phrasing test split (``test_seen``) holds exactly the scenes, masks and targets of ``test``, worded
and phrased as in training: the two splits differ only in wording and phrasing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from dtwinseg.data_builders.synthetic.realistic.queries import Programs, RQuery
from dtwinseg.data_builders.synthetic.realistic.scene import RealisticScene, render_realistic, scene_instances
from dtwinseg.data_builders.synthetic.realistic.wording import describe_all

# split -> (split whose scenes it holds, role of its words)
SPLIT_ROLES: dict[str, tuple[str, str]] = {
    "train": ("train", "train"), "val": ("val", "val"), "test": ("test", "test"), "test_seen": ("test", "train"),
}
_ROLE_CODES = {"train": 0, "val": 1, "test": 2}


def split_role(split: str) -> tuple[str, str]:
    """(scene split, word role) of a split name; other names hold their own scenes in the train role."""
    return SPLIT_ROLES.get(split, (split, "train"))


@dataclass
class WordedScene:
    """A realistic scene with its instance records (semantics included): what SynthSample writes."""

    scene: RealisticScene
    records: list[dict]

    @property
    def image(self) -> np.ndarray:
        return self.scene.image

    def instances(self) -> list[dict]:
        return self.records

    def instance_mask(self, index: int) -> np.ndarray:
        return self.scene.instance_mask(index)


def word_rng(seed: int, split_code: int, index: int, role: str, stream: int) -> np.random.Generator:
    """The generator of one word stream (1: query phrasing, 2: twin wording) of a sample in a role."""
    return np.random.default_rng([int(seed), split_code, int(index), 100 + _ROLE_CODES[role], stream])


def realistic_samples(rng: np.random.Generator, seed: int, split_code: int, index: int, roles: list[str], cfg,  # noqa: ANN001
                      dims: list[str]) -> list[tuple[WordedScene, RQuery, bool]] | None:
    """Scene + query for the first of ``dims`` that the scenes drawn from ``rng`` support (``cfg``: the
    SynthConfig), worded and phrased in each of ``roles`` (one scene and one program: the same targets);
    None when ``max_tries`` scenes supported none."""
    r = cfg.realistic
    for dim in dims:
        for _ in range(cfg.max_tries):
            scene = render_realistic(rng, cfg.size, cfg.min_visible, r.max_masks)
            if scene is None or len(scene.things) < r.min_masks:
                continue
            state = rng.bit_generator.state
            queries = []
            for role in roles:
                rng.bit_generator.state = state  # every role makes the same choices of targets
                progs = Programs(rng, scene, word_rng(seed, split_code, index, role, 1), role, cfg.margin_px,
                                 cfg.margin_ratio)
                queries.append(getattr(progs, dim)())
            if queries[0] is None or not queries[0].targets:
                continue
            is_sentence = bool(rng.random() < cfg.p_sentence)
            out = []
            for role, q in zip(roles, queries, strict=True):
                texts = describe_all(word_rng(seed, split_code, index, role, 2), scene, role, r)
                records = scene_instances(scene)
                for rec, words in zip(records, texts, strict=True):
                    rec["semantic"] = words[0]
                    rec["alt_semantics"] = words[1:]
                out.append((WordedScene(scene, records), q, is_sentence))
            return out
    return None
