"""Prediction records of an eval run folder (``<out>/<label>/predictions*.jsonl``): reading them back
safely after a kill. Shared by the harness (resume, merge) and the report (worst cases)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from dtwinseg.io import DataError, atomic_write_text


def load_records(path: Path) -> list[dict]:
    """Records of a predictions file; a torn last line (killed writer) is dropped from the file too,
    so appending after it cannot glue two records together."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records, good = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
            good.append(line)
        except json.JSONDecodeError as e:
            if n != len(lines):
                raise DataError(path, f"line {n}", f"invalid JSON ({e.msg})") from e
    if len(good) != len([ln for ln in lines if ln.strip()]) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(ln + "\n" for ln in good))
    return records



def iter_run_records(out: Path, label: str) -> Iterator[dict]:
    """All prediction records of one checkpoint of a run, over its shards."""
    for p in sorted((out / label).glob("predictions*.jsonl")):
        yield from load_records(p)
