"""Small file helpers shared by every writer: atomic writes (with the process umask), JSON/JSONL, YAML
configs, stable hashes, and the checks on names and sizes that reach the file system (labels, file keys,
stored text caps)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from dtwinseg.redaction import redact_text


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


class OutputError(OSError):
    """Writing an output failed for a reason of the machine, not of the data (disk full, quota, read-only
    file system, permission denied, too many open files): ``str()`` is one line naming the path, what went
    wrong and what to do. Raised by every writer of this module; long jobs stop on it (the next sample
    would fail the same way) instead of counting it as one sample's failure. The CLI exits 1 with it."""

    HINTS = {errno.ENOSPC: "free some space and rerun: finished work is kept",
             errno.EDQUOT: "free some space and rerun: finished work is kept",
             errno.EROFS: "the file system is read-only; write elsewhere (another --out)",
             errno.EACCES: "no permission to write there; write elsewhere (another --out)",
             errno.EPERM: "no permission to write there; write elsewhere (another --out)",
             errno.EMFILE: "too many open files; raise the limit (ulimit -n) and rerun",
             errno.ENFILE: "too many open files on this machine; rerun when fewer are open"}

    def __str__(self) -> str:
        what = self.strerror or (errno.errorcode.get(self.errno or 0) or "error")
        hint = self.HINTS.get(self.errno or 0)
        return f"cannot write {self.filename}: {what}" + (f" ({hint})" if hint else "")

    @classmethod
    def wrap(cls, e: OSError, path: str | os.PathLike) -> OutputError:
        """``e`` as an OutputError naming ``path`` (kept when it is one already)."""
        if isinstance(e, OutputError):
            return e
        return cls(e.errno, e.strerror or str(e), str(path))


def describe_os_error(e: OSError) -> str:
    """One line for any OSError: the path, what went wrong and, for a full disk, a read-only file system, a
    permission or open-file limit, what to do (never a traceback)."""
    if isinstance(e, OutputError):
        return str(e)
    what = e.strerror or str(e) or type(e).__name__
    where = f"{e.filename}: " if e.filename is not None else ""
    if getattr(e, "filename2", None) is not None:
        where = f"{e.filename} -> {e.filename2}: "
    hint = OutputError.HINTS.get(e.errno or 0)
    return f"{where}{what}" + (f" ({hint.replace('write', 'work')})" if hint else "")


# errnos that say the machine, not the sample, is at fault: a long job stops instead of counting a failure
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE})


def is_fatal_os_error(e: BaseException) -> bool:
    """True for an :class:`OutputError` or an OSError no later sample can escape (disk full, read-only
    file system, too many open files): loops that record per-sample failures re-raise these."""
    return isinstance(e, OutputError) or (isinstance(e, OSError) and e.errno in FATAL_ERRNOS)


# --- text out: any Python str, no secret -------------------------------------------------------------
_escaped = [0]
_escaped_lock = threading.Lock()
_SURROGATE = re.compile("[\ud800-\udfff]")


def escaped_surrogates() -> int:
    """How many lone surrogates (a str that is not valid Unicode: ``"\\ud83d"``, or undecodable command-line
    bytes) this process wrote escaped as ``\\udXXXX``."""
    return _escaped[0]


def encode_text(text: str) -> bytes:
    """``text`` as UTF-8 for a file, with every live secret redacted (:mod:`dtwinseg.redaction`). Lone
    surrogates, which UTF-8 cannot encode, are written as the escape ``\\udXXXX`` (counted:
    :func:`escaped_surrogates`): in JSON (and YAML double-quoted) text that is the same string again, so a
    JSON reader gets back exactly what was written."""
    text = redact_text(text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        with _escaped_lock:
            _escaped[0] += len(_SURROGATE.findall(text))
        return text.encode("utf-8", "backslashreplace")


def valid_text(text: str) -> str:
    """``text`` as valid Unicode, for a model's input (tokenizers refuse lone surrogates): a surrogate pair
    split in two Python characters is joined, and each lone surrogate becomes U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def dumps_json(obj: Any, indent: int | None = None) -> str:
    """JSON text of ``obj`` (non-ASCII kept readable); what every JSON / JSONL writer here writes."""
    return json.dumps(obj, indent=indent, ensure_ascii=False)


def dump_yaml(obj: Any) -> str:
    """YAML text of ``obj`` (keys in order, non-ASCII kept; characters YAML cannot hold raw are escaped)."""
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)


# --- temporary files: a name this tool alone writes, cleaned up after a kill -9 ---------------------------
TMP_TAG = "dtwtmp"
_TMP_RE = re.compile(rf"^\..*\.{TMP_TAG}-([0-9a-f]{{8}})-(\d+)\.[A-Za-z0-9_]+\.tmp$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_prefix(path: Path) -> str:
    """Prefix of the temporary file that becomes ``path``: ``.<name>.dtwtmp-<host>-<pid>.`` (then random
    characters and ``.tmp``), so :func:`remove_stale_temps` can tell ours, and dead writers', apart."""
    return f".{path.name[:100]}.{TMP_TAG}-{_host_tag()}-{os.getpid()}."


def remove_stale_temps(folder: str | os.PathLike, max_age_s: float = 86400.0) -> int:
    """Delete the temporary files this tool left in ``folder`` when a writer was killed (``kill -9``):
    only names of :func:`temp_prefix`'s pattern, of a process of this machine that is gone (or, from
    another machine, older than ``max_age_s``). Nothing else is touched. Returns how many went."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        host, pid = m.group(1), int(m.group(2))
        try:
            if host == _host_tag():
                if pid == os.getpid() or pid_alive(pid):
                    continue
            elif now - entry.stat(follow_symlinks=False).st_mtime < max_age_s:
                continue
            os.unlink(entry.path)
            removed += 1
        except OSError:
            continue
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- writers -----------------------------------------------------------------------------------------
def replace_folder(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Put the finished folder ``tmp`` (a sibling of ``out``) at ``out``: an existing ``out`` is first moved
    aside under a temporary name and deleted, so a reader sees the old folder or the new one, never a mix.
    The caller decides that ``out`` may be replaced (its own earlier output)."""
    import shutil

    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "x")
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, out)
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a half-written file; a failed write (disk full, read-only, ...) removes its
    temporary file and raises :class:`OutputError` naming ``path``; a killed writer leaves only a
    temporary file of a recognisable name, never mistaken for a finished one (:func:`remove_stale_temps`).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; finished files get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise OutputError.wrap(e, path) from None
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
    """Write any Python str atomically (:func:`encode_text`: secrets redacted, lone surrogates escaped)."""
    return atomic_write_bytes(path, encode_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, dumps_json(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a syntax error or bytes that are not UTF-8 become a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(path, None, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except RecursionError:
        raise DataError(path, None, "JSON nested too deeply") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it: a killed process loses at most the line being written.

    A torn last line left by a killed writer is cut off first (it would otherwise glue onto this one), and
    a failed write (disk full, ...) is undone to the previous end of the file, so the file never holds a
    torn line in its middle; the failure is an :class:`OutputError` naming the file."""
    data = encode_text(dumps_json(record) + "\n")
    try:
        with open(path, "a+b") as f:
            end = _cut_torn_tail(f)
            try:
                f.write(data)
                f.flush()
            except OSError:
                f.truncate(end)
                raise
    except OSError as e:
        raise OutputError.wrap(e, path) from None


def _cut_torn_tail(f: Any) -> int:
    """Truncate a file opened "a+b" after its last newline when it does not end with one; its new end."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return 0
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return end
    pos = end
    while pos > 0:
        step = min(65536, pos)
        f.seek(pos - step)
        k = f.read(step).rfind(b"\n")
        if k >= 0:
            pos = pos - step + k + 1
            break
        pos -= step
    f.truncate(pos)
    return pos


def iter_jsonl(path: str | os.PathLike, *, skip_torn_tail: bool = True) -> Iterator[dict]:
    """Yield records of a JSONL file. A torn last line (a killed writer) is skipped when allowed; any other
    line that is not JSON (or not UTF-8) is a DataError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_bytes().splitlines()
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            if skip_torn_tail and n == len(lines):
                return
            why = getattr(e, "msg", None) or ("not UTF-8 text" if isinstance(e, UnicodeDecodeError)
                                              else "nested too deeply")
            raise DataError(path, f"line {n}", f"invalid JSON ({why})") from None


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    text = "".join(dumps_json(r) + "\n" for r in records)
    return atomic_write_text(path, text)


def utf8_bytes(text: str) -> bytes:
    """The bytes of any str: UTF-8, with undecodable input bytes (surrogate-escaped by the OS layer) given
    back as they were and other lone surrogates kept (surrogatepass): never an exception."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable object that does not depend on key order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")
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

# Limits of a config file, checked before anything walks it: its size, and the size of the tree its
# aliases expand to (an "anchor bomb" of 9 levels of 9 aliases is 9 ** 9 nodes in a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


class YAMLBudgetError(ValueError):
    """A YAML document over a limit of :func:`parse_yaml`."""


def _check_yaml_budget(root: yaml.Node, max_nodes: int, max_depth: int) -> None:
    """Refuse (YAMLBudgetError) a node graph whose expanded tree (aliases counted each time they are
    used) exceeds ``max_nodes``, that nests deeper than ``max_depth`` or that refers to itself. Linear in
    the composed graph: each node's expanded size is computed once."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[key] = height[key] = 1
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if size[key] > max_nodes:
                raise YAMLBudgetError(f"expands to more than {max_nodes:,} nodes (aliases of aliases?)")
            if height[key] > max_depth:
                raise YAMLBudgetError(f"nested more than {max_depth} levels deep")
            continue
        if key in size:
            continue
        if key in on_path:
            raise YAMLBudgetError("an alias refers to the node that contains it (a recursive structure)")
        if depth > max_depth:
            raise YAMLBudgetError(f"nested more than {max_depth} levels deep")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in size)


def parse_yaml(text: str, *, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH) -> Any:
    """One YAML document with YAML 1.2 scalars (:class:`YAML12Loader`), refused before it is built into
    Python objects when its expanded tree is over ``max_nodes`` nodes, nests deeper than ``max_depth`` or
    is recursive (YAMLBudgetError); a syntax error is a ``yaml.YAMLError``. The one YAML parser of the
    project: config files (:func:`load_yaml`), ``key=value`` overrides, recipes being published."""
    loader = YAML12Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLBudgetError(f"nested more than {max_depth} levels deep") from None
        if node is None:
            return None
        _check_yaml_budget(node, max_nodes, max_depth)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike, max_bytes: int = MAX_CONFIG_BYTES) -> dict:
    """A YAML mapping read with YAML 1.2 scalars (:func:`parse_yaml`): the one reader of every config file
    (recipes, perception / reasoning / teacher / pipeline configs, manifests). A missing or oversized file
    (over ``max_bytes``), bytes that are not UTF-8, invalid YAML, a document over the node / depth budget
    or a non-mapping top level is a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a folder, expected a YAML file") from None
    except PermissionError:
        raise DataError(path, None, "not readable (permission denied)") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise DataError(path, None, f"larger than {max_bytes:,} bytes: not a config file "
                                    "(configs are a few kilobytes)")
    try:
        data = parse_yaml(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text (byte {e.start})") from None
    except YAMLBudgetError as e:
        raise DataError(path, None, f"refused: the YAML {e}") from None
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
    raw = utf8_bytes(name)
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
