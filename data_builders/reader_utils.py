"""Pieces every dataset reader shares: typed field access with DataError, JSON with an encoding
fallback, image sizes from file headers, RLE / PNG masks, and a list-backed dataset that records
skipped inputs under ``strict=False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from dtwinseg.data_builders.sample import Sample

from dtwinseg.io import DataError

R = TypeVar("R")

_MISSING = object()


def get_field(obj: Any, key: str | int, types: type | tuple[type, ...], path: str | os.PathLike,
              where: str, default: Any = _MISSING) -> Any:
    """``obj[key]`` checked against ``types``; a missing key or wrong type is a DataError naming ``where``.

    ``where`` is the dotted field name used in the message (e.g. ``"shapes[2].points"``). With a
    ``default``, a missing key (or a JSON null) returns the default instead.
    """
    try:
        value = obj[key]
    except (KeyError, IndexError, TypeError):
        if default is not _MISSING:
            return default
        raise DataError(path, where, "missing") from None
    if value is None and default is not _MISSING:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DataError(path, where, f"expected {_type_names(types)}, got bool")
    if not isinstance(value, types):
        raise DataError(path, where, f"expected {_type_names(types)}, got {type(value).__name__}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def read_json_fallback(path: str | os.PathLike, encodings: Sequence[str] = ("utf-8-sig", "cp1252")) -> Any:
    """Parse a JSON file, trying each text encoding in turn (the reference reads UTF-8, then cp1252; a
    UTF-8 byte-order mark, as some Windows editors write, is accepted).

    A file that no encoding decodes into valid JSON (truncated, not JSON) is a DataError naming it.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror or e}") from e
    last: Exception | None = None
    for enc in encodings:
        try:
            return json.loads(raw.decode(enc))
        except UnicodeDecodeError as e:
            last = e
        except json.JSONDecodeError as e:
            raise DataError(path, None, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    raise DataError(path, None, f"not decodable as {' or '.join(encodings)}: {last}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image from its header only (PIL, no pixel decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError as e:
        raise DataError(path, None, "image file not found") from e
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(path, None, f"unreadable image: {e}") from e
    return int(h), int(w)


def check_rle(rle: Any, path: str | os.PathLike, where: str, size: tuple[int, int] | None = None) -> dict:
    """A COCO RLE dict ``{"size": [H, W], "counts": str | list[int]}``, checked; ``size`` must match if given."""
    if not isinstance(rle, dict):
        raise DataError(path, where, f"expected a COCO RLE object, got {type(rle).__name__}")
    hw = get_field(rle, "size", list, path, f"{where}.size")
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in hw):
        raise DataError(path, f"{where}.size", f"expected [height, width], got {hw!r}")
    get_field(rle, "counts", (str, list), path, f"{where}.counts")
    if size is not None and tuple(hw) != tuple(size):
        raise DataError(path, f"{where}.size", f"mask size {hw} does not match image size {list(size)}")
    return rle


def decode_rle_mask(rle: dict, path: str | os.PathLike, where: str) -> np.ndarray:
    """Decode a checked RLE to a bool H x W mask; corrupt counts are a DataError."""
    from dtwinseg.twin import decode_rle

    try:
        return decode_rle(rle)
    except Exception as e:  # pycocotools raises bare ValueError / UnicodeError / TypeError on bad counts
        raise DataError(path, where, f"corrupt RLE: {e}") from e


def read_png_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask PNG as a bool H x W array (any nonzero value in the first channel is foreground)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError as e:
        raise DataError(path, None, "mask file not found") from e
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(path, None, f"unreadable mask image: {e}") from e
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr > 0


def check_points(points: Any, path: str | os.PathLike, where: str) -> np.ndarray:
    """Polygon ``[[x, y], ...]`` (at least one point, finite, within int32) as float64 K x 2."""
    if not isinstance(points, list) or not points:
        raise DataError(path, where, "expected a non-empty list of [x, y] points")
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(path, where, f"points must be [x, y] numbers: {e}") from e
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(path, where, f"expected [x, y] pairs, got an array of shape {arr.shape}")
    if not np.isfinite(arr).all() or np.abs(arr).max() >= 2**31:
        raise DataError(path, where, "points must be finite and within the int32 range")
    return arr


class ListDataset(Generic[R]):
    """A reader over a list of validated records; each record becomes a Sample when iterated.

    Subclasses fill ``self._records`` in ``__init__`` (validating what is cheap to validate) and define
    ``_load(record) -> Sample`` (heavy work: rasterising / decoding masks). A DataError from either
    stage is raised under ``strict=True``, else recorded in ``skipped`` as ``(file, reason)``.
    """

    name: str = "dataset"

    def __init__(self, split: str, strict: bool) -> None:
        self.split = split
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []
        self._records: list[R] = []

    def _load(self, record: R) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record_file(self, record: R) -> str:
        """The file a record came from, for the ``skipped`` list."""
        return str(record)

    def _try(self, fn: Callable[[], R], fallback_file: str) -> R | None:
        """Run ``fn``; a DataError is raised (strict) or recorded as skipped (returns None)."""
        try:
            return fn()
        except DataError as e:
            if self.strict:
                raise
            self.skipped.append((e.path or fallback_file, str(e)))
            return None

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        """The index-th sample (DataError if its masks turn out to be malformed, regardless of strict)."""
        return self._load(self._records[index])

    def __iter__(self) -> Iterator[Sample]:
        for rec in self._records:
            sample = self._try(lambda rec=rec: self._load(rec), self._record_file(rec))
            if sample is not None:
                yield sample


def require_dir(path: Path, root: str | os.PathLike, what: str) -> Path:
    if not path.is_dir():
        raise DataError(root, "split", f"{what} not found: {path}")
    return path
