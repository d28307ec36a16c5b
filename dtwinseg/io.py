"""Small file helpers shared by every writer: atomic writes, JSON/JSONL, YAML configs, stable hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input: the message names the file and the field at fault."""

    def __init__(self, path: str | os.PathLike | None, field: str | None, message: str):
        self.path = str(path) if path is not None else None
        self.field = field
        self.message = message
        where = self.path or "<input>"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a half-written file, and a killed writer leaves only a ``.tmp`` file
    that is never mistaken for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a syntax error becomes a DataError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, None, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it: a killed process loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


def iter_jsonl(path: str | os.PathLike, *, skip_torn_tail: bool = True) -> Iterator[dict]:
    """Yield records of a JSONL file. A torn last line (a killed writer) is skipped when allowed."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if skip_torn_tail and n == len(lines):
                return
            raise DataError(path, f"line {n}", f"invalid JSON ({e.msg})") from e


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(path, text)


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable object that does not depend on key order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def load_yaml(path: str | os.PathLike) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DataError(path, None, f"invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(path, None, "expected a mapping at the top level")
    return data
