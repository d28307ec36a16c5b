"""What a dataset split holds: sample counts, short/long queries, empty ground truths, tags, skipped files.

Used by ``dtwinseg data stats``; reads every sample (so every mask is drawn / decoded once).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
from dtwinseg.data_builders.registry import Dataset
from dtwinseg.data_builders.sample import Sample


def sample_facts(sample: Sample) -> dict:
    """Per-sample facts the summary counts: target and ignore pixels (as % of the image)."""
    gt = sample.gt_mask
    n = max(gt.size, 1)
    return {"target_pct": 100.0 * int(np.count_nonzero(gt == 1)) / n,
            "ignore_pct": 100.0 * int(np.count_nonzero(gt == 255)) / n}


def summarise(samples: Iterable[Sample], dataset: Dataset) -> dict:
    """JSON-ready summary of the samples read from ``dataset`` (call after iterating, for ``skipped``)."""
    n = short = empty = with_ignore = with_instances = 0
    dims: Counter[str] = Counter()
    grans: Counter[str] = Counter()
    target_pct: list[float] = []
    for s in samples:
        facts = sample_facts(s)
        n += 1
        short += int(not s.is_sentence)
        empty += int(facts["target_pct"] == 0.0)
        with_ignore += int(facts["ignore_pct"] > 0.0)
        with_instances += int(s.instances is not None)
        dims[s.dimension or "untagged"] += 1
        grans["untagged" if s.granularity is None else str(s.granularity)] += 1
        target_pct.append(facts["target_pct"])
    skipped = [{"file": f, "reason": r} for f, r in dataset.skipped]
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "samples": n,
        "short": short,
        "long": n - short,
        "empty_ground_truth": empty,
        "with_ignore_region": with_ignore,
        "with_instances": with_instances,
        "mean_target_area_pct": float(np.mean(target_pct)) if target_pct else 0.0,
        "dimensions": dict(sorted(dims.items())),
        "granularity": dict(sorted(grans.items())),
        "skipped": len(skipped),
        "skipped_files": skipped,
    }
