"""Where a process stands in a multi-process job, and the plumbing every long job shares: the shard spec
(``--shard I/N`` or RANK / WORLD_SIZE), the samples a shard takes, one progress bar per job (drawn by
local rank 0 only), the device "auto" resolves to (``cuda:LOCAL_RANK``), and a lock file that stops two
processes writing the same output while never blocking forever after a ``kill -9``.

Used by ``build-dt`` (data_builders/build_dt.py), the eval harness (eval/harness.py) and the backends
that place models on a device.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dtwinseg.io import DataError, pid_alive

T = TypeVar("T")
Shard = tuple[int, int]

_SHARD_RE = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*")


# --- ranks and shards --------------------------------------------------------------------------
def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise DataError(None, name, f"environment variable must be an integer, got {raw!r}") from None


def local_rank(env: Mapping[str, str] | None = None) -> int:
    """LOCAL_RANK (torchrun, accelerate launch), else 0."""
    return _env_int(os.environ if env is None else env, "LOCAL_RANK", 0)


def parse_shard(text: str | None = None, env: Mapping[str, str] | None = None) -> Shard:
    """``"i/n"`` -> (i, n) with 0 <= i < n; without text, (RANK, WORLD_SIZE) when WORLD_SIZE > 1; else (0, 1).

    A malformed spec is a DataError naming ``--shard``."""
    env = os.environ if env is None else env
    if text:
        m = _SHARD_RE.fullmatch(text)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise DataError(None, "--shard", f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
        return int(m.group(1)), int(m.group(2))
    world = _env_int(env, "WORLD_SIZE", 1)
    if world > 1:
        rank = _env_int(env, "RANK", local_rank(env))
        if not 0 <= rank < world:
            raise DataError(None, "RANK", f"rank {rank} outside WORLD_SIZE {world}")
        return rank, world
    return 0, 1


def shard_indices(n_samples: int, shard: Shard = (0, 1), limit: int | None = None) -> list[int]:
    """Dataset positions a shard takes: of the first ``limit`` samples (all when None), those == i mod n."""
    i, n = shard
    total = n_samples if limit is None else min(limit, n_samples)
    return list(range(i, total, n))


def shard_suffix(shard: Shard) -> str:
    """File-name suffix of a shard's own files: "" for one process, ``.shard-I-of-N`` otherwise."""
    i, n = shard
    return "" if n == 1 else f".shard-{i}-of-{n}"


def iter_positions(dataset: Any, indices: list[int]) -> Iterator[tuple[int, Any]]:
    """(position, sample or the exception reading it) for ``indices``: random access when the reader has
    it, else one pass over the reader that stops after the last wanted position."""
    if hasattr(dataset, "__getitem__"):
        for k in indices:
            try:
                yield k, dataset[k]
            except Exception as e:  # noqa: BLE001 - the caller counts it as this sample's failure
                yield k, e
        return
    if not indices:
        return
    wanted, last = set(indices), indices[-1]
    for k, sample in enumerate(dataset):
        if k in wanted:
            yield k, sample
        if k >= last:
            return


# --- progress ----------------------------------------------------------------------------------
class ProgressBar:
    """One bar per job: drawn only when ``enabled`` and this is local rank 0 (co-located ranks would
    otherwise draw over each other). ``advance(n)`` works either way. The bar is drawn on stderr (stdout
    carries results: counts, JSON, tables) unless ``console`` (a rich Console) says otherwise;
    ``transient``: the bar disappears when done."""

    def __init__(self, label: str, total: int | None, enabled: bool = True,
                 env: Mapping[str, str] | None = None, *, console: Any = None, transient: bool = False):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.drawn = bool(enabled) and local_rank(env) == 0
        if console is None and self.drawn:
            console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn())
        self._bar = Progress(*columns, console=console, disable=not self.drawn, transient=transient)
        self._task = self._bar.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)

    def __enter__(self) -> ProgressBar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)


def progress(items: Iterable[T], label: str, enabled: bool = True, total: int | None = None, *,
             console: Any = None, transient: bool = False) -> Iterator[T]:
    """``items`` with a :class:`ProgressBar` advanced once per item (``total``: ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(label, total, enabled, console=console, transient=transient) as bar:
        for item in items:
            yield item
            bar.advance()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (restored afterwards; n <= 0: unchanged).

    With 2 threads on a 2-core machine that another job also uses, every op waits for the descheduled
    thread (measured: best_subset 0.42 s per sample with 2 threads vs 0.02 s with 1)."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- devices -----------------------------------------------------------------------------------
def resolve_device(device: str = "auto", env: Mapping[str, str] | None = None) -> str:
    """"auto" -> ``cuda:LOCAL_RANK`` (modulo the visible GPUs, so ``CUDA_VISIBLE_DEVICES=i`` per process
    also works) when CUDA is available, else "cpu"; anything else as given. The one place "auto" is
    resolved: co-located shards under torchrun / accelerate launch each take their own GPU."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank(env) % torch.cuda.device_count()}"


# --- memos -------------------------------------------------------------------------------------
class LRUMemo:
    """A bounded, thread-safe memo of results by key: the ``size`` most recently used are kept. ``copy`` is
    applied to each result stored and each one handed out, so a caller may change what it got (the memo of
    the oracle bound, eval/records.py; of the scene facts, dtwinseg/formats/facts.py)."""

    def __init__(self, size: int, copy: Any = None):
        self.size = size
        self._copy = copy or (lambda value: value)
        self._held: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_compute(self, key: Any, compute: Any) -> Any:
        """The remembered result of ``key``, else ``compute()`` (called outside the lock), remembered."""
        with self._lock:
            if key in self._held:
                self._held.move_to_end(key)
                return self._copy(self._held[key])
        value = compute()
        with self._lock:
            self._held[key] = self._copy(value)
            while len(self._held) > self.size:
                self._held.popitem(last=False)
        return value


# --- locks -------------------------------------------------------------------------------------
class LockError(DataError):
    """Another live process holds the lock of an output (the message names it and the lock file)."""


class RunLock:
    """An exclusive lock on ``path`` held while one process writes an output folder.

    Uses ``flock``: the kernel releases it when the holder dies (``kill -9`` included), so a stale lock
    file never blocks a later run. The file records ``pid@host`` for the refusal message. Where flock is
    unavailable, falls back to an O_EXCL file whose pid is checked for liveness on the same host.
    """

    def __init__(self, path: str | os.PathLike, what: str = "this output"):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            os.close(fd)
            return self._acquire_excl()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockError(self.path, None, f"{self.what} is being written by {holder}; wait for it "
                                                 "or use another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder().encode(), 0)
        self._fd = fd
        return self

    def _acquire_excl(self) -> RunLock:  # pragma: no cover - not POSIX
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = self.path.read_text(encoding="utf-8", errors="replace").strip()
            pid, _, host = holder.partition("@")
            if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
                self.path.unlink(missing_ok=True)
                return self._acquire_excl()
            raise LockError(self.path, None, f"{self.what} is being written by {holder}") from None
        os.write(fd, _holder().encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless, reused next time)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class FileLock:
    """A blocking exclusive lock (flock) on ``path`` for short critical sections shared by processes (e.g.
    shards appending to and pruning one failures file); released when the holder exits or dies."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no cross-process exclusion
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


# --- child processes -----------------------------------------------------------------------------
def run_forwarding_signals(cmd: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``cmd`` and wait for it; a SIGTERM this process receives meanwhile is passed on to the child
    (whose ranks then save and stop), and SIGINT is left to the child (a terminal's Ctrl-C reaches the
    whole process group already), so this process never dies before the child it started. Returns the
    child's exit code (negative: killed by that signal)."""
    proc = subprocess.Popen(cmd, env=None if env is None else dict(env))
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()

    def forward(signum: int, frame: Any) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- third-party noise of a training run ---------------------------------------------------------
# Deprecation warnings a user cannot act on (raised inside TRL / transformers / peft for arguments they set
# themselves): message prefixes of FutureWarnings.
KNOWN_FUTURE_WARNINGS = ("`gradient_checkpointing` is deprecated", "`gradient_checkpointing_kwargs` is deprecated",
                         "`is_gradient_checkpointing` is deprecated", "`gradient_checkpointing_enable` is deprecated")


def known_warning_filters() -> list[str]:
    """The filters of :data:`KNOWN_FUTURE_WARNINGS` in PYTHONWARNINGS syntax (for launched processes)."""
    return [f"ignore:{p}:FutureWarning" for p in KNOWN_FUTURE_WARNINGS]


def quiet_third_party() -> None:
    """Silence the known third-party noise of a training run in this process: the FutureWarnings above,
    DeepSpeed's "Setting accelerator to CPU" line on a machine without CUDA (DS_ACCELERATOR=cpu, which
    DeepSpeed reads instead of probing; nothing else changes), and the "Running in WANDB offline mode" line
    transformers prints when its integrations are first imported with WANDB_MODE=offline (wandb says so
    itself when a run does log to it). Call it before anything imports transformers' trainer."""
    import warnings

    import torch

    for prefix in KNOWN_FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(prefix), category=FutureWarning)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    saved = os.environ.pop("WANDB_MODE", None)
    try:  # the line is printed once, when this module is first imported
        import transformers.integrations.integration_utils  # noqa: F401
    finally:
        if saved is not None:
            os.environ["WANDB_MODE"] = saved
