"""Small file helpers shared by every writer: atomic writes (with the process umask), JSON/JSONL, YAML
configs, stable hashes, and the checks on names and sizes that reach the file system (labels, file keys,
stored text caps)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml


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

    def __reduce__(self) -> tuple:  # picklable (raised in worker processes), subclasses included
        return type(self), (self.path, self.field, self.message)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a half-written file, and a killed writer leaves only a ``.tmp`` file
    that is never mistaken for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; finished files get the usual mode
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


def _umask() -> int:
    """The process umask: from /proc on Linux (thread-safe), else set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


class YAML12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: booleans are only true/false (``no`` / ``off`` stay strings) and
    floats include ``1e-4`` (PyYAML's 1.1 rules read the first as False and the second as a string)."""


YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YAML12Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                   re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping read with YAML 1.2 scalars (:class:`YAML12Loader`): the one reader of every config
    file (recipes, perception / reasoning / teacher / pipeline configs, manifests). A missing file,
    invalid YAML or a non-mapping top level is a DataError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=YAML12Loader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a folder, expected a YAML file") from None
    except PermissionError:
        raise DataError(path, None, "not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise DataError(path, None, f"invalid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(path, None, "expected a mapping at the top level")
    return data


# --- names and sizes that reach the file system ----------------------------------------------------
_LABEL_RE = re.compile(r"[A-Za-z0-9_.+-]{1,100}")
MAX_NAME_BYTES = 200  # below the usual 255-byte file-name limit, leaving room for suffixes


def check_label(label: str, field: str = "label") -> str:
    """``label`` if it is safe as one folder name (letters, digits, ``_ . + -``, at most 100 characters,
    not only dots); else a DataError naming ``field``."""
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label) or not label.strip("."):
        raise DataError(None, field, f"{label!r} is not a usable name: use 1-100 letters, digits, '_', '.', '+' "
                                     "or '-' (not only dots), e.g. NAME=SPEC")
    return label


def bounded_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` when its UTF-8 form fits in ``max_bytes``; else a prefix that fits plus ``~`` and a hash of
    the whole name (distinct names stay distinct; the file system's 255-byte limit is never hit)."""
    raw = name.encode("utf-8")
    if len(raw) <= max_bytes:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    head = raw[:max_bytes - len(digest) - 1].decode("utf-8", "ignore")
    while head.endswith("%") or head[-2:-1] == "%":  # never cut a percent escape in half
        head = head[:-1]
    return f"{head}~{digest}"


def clip_middle(text: str, cap: int) -> tuple[str, bool]:
    """(``text``, False) when it fits in ``cap`` characters; else its first and last ``cap // 2``
    characters around a marker, and True. The head (where answers usually start) is never lost."""
    if len(text) <= cap:
        return text, False
    half = max(cap // 2, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}", True
