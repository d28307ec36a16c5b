"""The one redaction helper: a secret's value, in any form it can take in text, becomes ``***``.

A value leaks in more forms than its raw one: JSON-escaped (a newline as ``\\n``, non-ASCII as ``\\uXXXX``),
Python-escaped (``repr`` of a str or of the bytes of a header), URL-encoded (``%0A``, ``+``), quoted for a
shell, or with its whitespace collapsed by a one-line error message. :func:`secret_forms` lists them all and
:func:`redact_text` replaces every one (longest first, so an escaped form is never half-replaced).

Which values are secret: the ones a caller passes (an API client passes its key), plus the **live secrets**
of the environment (:func:`live_secrets`): variables named like a credential (``*_KEY`` such as
``OPENAI_API_KEY``, ``*_TOKEN`` such as ``HF_TOKEN``, ``*_SECRET``, ``*_PASSWORD``, ...) and every variable a
config named as its key variable (:func:`register_secret_env`, called for each ``api_key_env``). Values shorter than
:data:`MIN_SECRET_CHARS` are not treated as secrets (``TOKEN=1`` would otherwise erase every ``1``).

Users: every writer of :mod:`dtwinseg.io` (JSON, JSONL, YAML, text), :mod:`dtwinseg.openai_chat` (answers
and errors), the CLI's output streams and ``dtwinseg publish`` (which refuses to stage a file holding a live
secret: :func:`find_live_secret`). This module imports nothing from dtwinseg (io depends on it).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import threading
import urllib.parse
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_SECRET_CHARS = 8

# Environment variable names that hold credentials (case-insensitive): ..._API_KEY, ..._TOKEN, ...
_SECRET_ENV = re.compile(r"(?:^|_)(?:KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIALS?)$", re.IGNORECASE)
_registered: set[str] = set()
_lock = threading.Lock()


def register_secret_env(name: str) -> None:
    """Treat the variable ``name`` as a secret from now on (a config named it as its API key variable)."""
    if name:
        with _lock:
            _registered.add(str(name))


def is_secret_env(name: str) -> bool:
    """True for a credential-like variable name (``OPENAI_API_KEY``, ``HF_TOKEN``, ``WANDB_API_KEY``,
    ``DB_PASSWORD``, ...) or one a config named as its key variable; ``TOKENIZERS_PARALLELISM`` is not."""
    return bool(_SECRET_ENV.search(name)) or name in _registered


def live_secrets(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values of the secret variables set in ``env`` (default: this process's environment), longest first,
    each at least :data:`MIN_SECRET_CHARS` characters."""
    env = os.environ if env is None else env
    values = {v for k, v in list(env.items()) if v and len(v.strip()) >= MIN_SECRET_CHARS and is_secret_env(k)}
    return tuple(sorted(values, key=lambda v: (-len(v), v)))


def _escapes(value: str) -> set[str]:
    out = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
           value.encode("unicode_escape").decode("ascii"), value.encode("utf-8", "backslashreplace").decode(
               "utf-8", "replace")}
    try:
        out.add(repr(value.encode("utf-8"))[2:-1])  # bytes repr (e.g. of an HTTP header)
        out.add(repr(value.encode("latin-1"))[2:-1])
    except UnicodeEncodeError:
        pass
    return out


@functools.lru_cache(maxsize=256)
def secret_forms(value: str) -> tuple[str, ...]:
    """Every form of ``value`` worth looking for, longest first: raw, JSON / Python / bytes escaped,
    URL-encoded, shell-quoted, whitespace collapsed, and (for a value with whitespace or control
    characters inside) each of its pieces of at least :data:`MIN_SECRET_CHARS` characters."""
    if not value:
        return ()
    forms = {value, value.strip()}
    forms |= _escapes(value)
    for safe in ("", "/"):
        forms.add(urllib.parse.quote(value, safe=safe))
        forms.add(urllib.parse.quote_plus(value, safe=safe))
    forms.add(shlex.quote(value))
    collapsed = " ".join(value.split())
    forms.add(collapsed)
    forms |= _escapes(collapsed)
    pieces = re.split(r"[\s\x00-\x1f\x7f]+", value)
    if len(pieces) > 1:
        for piece in pieces:
            if len(piece) >= MIN_SECRET_CHARS:
                forms.add(piece)
                forms |= _escapes(piece)
                forms.add(urllib.parse.quote(piece, safe=""))
    forms.discard("")
    return tuple(sorted(forms, key=lambda f: (-len(f), f)))


def redact_text(text: str, secrets: Iterable[str] | None = None, *, live: bool = True) -> str:
    """``text`` with every form of every secret replaced by ``***``: the ``secrets`` given and, with
    ``live``, the live secrets of the environment."""
    if not text:
        return text
    values = [s for s in (secrets or ()) if s]
    if live:
        values += live_secrets()
    if not values:
        return text
    forms = sorted({f for v in values for f in secret_forms(v) if len(f) >= min(4, len(v))},
                   key=lambda f: (-len(f), f))
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def find_live_secret(data: bytes | str, env: Mapping[str, str] | None = None) -> str | None:
    """The name of a live secret variable one of whose forms occurs in ``data`` (text or bytes), else None."""
    secrets = {k: v for k, v in list((os.environ if env is None else env).items())
               if v and len(v.strip()) >= MIN_SECRET_CHARS and is_secret_env(k)}
    for name, value in sorted(secrets.items()):
        for form in secret_forms(value):
            if len(form) < MIN_SECRET_CHARS:
                continue
            needle = form.encode("utf-8", "backslashreplace") if isinstance(data, bytes) else form
            if needle in data:
                return name
    return None
