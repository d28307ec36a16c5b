"""DATASET_SPEC strings (``name:root:split``) -> dataset readers.

Examples: ``reasonseg:/data/ReasonSeg:val``, ``llmseg40k:/data/LLM-Seg40K:test``,
``refcocog:/data/refer:val``, ``synthetic:runs/demo/data:test`` (ReasonSeg format + instance masks).
Readers are iterables of :class:`~data_builders.sample.Sample` with ``__len__`` and a ``skipped`` list
of ``(file, reason)`` for inputs skipped under ``strict=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from dtwinseg.data_builders.sample import Sample

from dtwinseg.io import DataError


class Dataset(Protocol):
    name: str
    split: str
    skipped: list[tuple[str, str]]

    def __iter__(self) -> Iterator[Sample]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str
    split: str

    def __str__(self) -> str:
        return f"{self.name}:{self.root}:{self.split}"


_READERS: dict[str, Callable[..., Dataset]] = {}


def register_reader(*names: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: ``@register_reader("reasonseg")`` on a factory ``(root, split, strict) -> Dataset``."""

    def deco(factory: Callable[..., Dataset]) -> Callable[..., Dataset]:
        for n in names:
            _READERS[n.lower()] = factory
        return factory

    return deco


def parse_spec(spec: str) -> DatasetSpec:
    """Split ``name:root:split``; the root may itself contain ':' (only the first and last count)."""
    parts = spec.split(":")
    if len(parts) < 3 or not parts[0] or not parts[-1]:
        raise DataError(None, "DATASET_SPEC",
                        f"{spec!r} is not NAME:ROOT:SPLIT, e.g. reasonseg:/data/ReasonSeg:val "
                        f"(names: {', '.join(sorted(_known()))})")
    return DatasetSpec(parts[0].lower(), ":".join(parts[1:-1]), parts[-1])


def _known() -> list[str]:
    _load_builtin_readers()
    return list(_READERS)


def _load_builtin_readers() -> None:
    # Importing the reader modules registers them.
    import importlib

    for mod in ("dtwinseg.data_builders.reasonseg", "dtwinseg.data_builders.llmseg", "dtwinseg.data_builders.refcoco", "dtwinseg.data_builders.synthetic"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def open_dataset(spec: str | DatasetSpec, *, strict: bool = True) -> Dataset:
    """Open the dataset a spec names. ``strict=False`` skips (and counts) malformed files.

    A split with no sample at all is a DataError (a wrong root or split name would otherwise evaluate
    or build nothing and report success)."""
    s = parse_spec(spec) if isinstance(spec, str) else spec
    _load_builtin_readers()
    if s.name not in _READERS:
        raise DataError(None, "DATASET_SPEC",
                        f"unknown dataset {s.name!r} in {str(s)!r}; known: {', '.join(sorted(_READERS))}")
    dataset = _READERS[s.name](s.root, s.split, strict=strict)
    if len(dataset) == 0:
        skipped = getattr(dataset, "skipped", [])
        why = f"; {len(skipped)} input file(s) skipped, first: {skipped[0][1]}" if skipped else ""
        raise DataError(s.root, "split", f"no samples in {s}{why}")
    return dataset
