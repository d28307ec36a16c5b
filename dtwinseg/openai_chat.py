"""One OpenAI-compatible ``/chat/completions`` client (stdlib HTTP) shared by every API backend.

:class:`ChatCompletionsClient` posts ``{"model", "messages", **params}`` to ``<base_url>/chat/completions``
and returns the answer text. It retries HTTP 408 / 409 / 425 / 429 / 500 / 502 / 503 / 504, timeouts and
connection errors with exponential backoff (a ``Retry-After`` header wins), does not retry other 4xx, and
raises one :class:`ChatCompletionsError` when a request fails for good. Each attempt has one deadline
(connect + whole response). ``complete_many`` runs requests on a bounded thread pool and returns answers
or errors in input order. :class:`EndpointConfig` is the one set of endpoint settings (URL, key variable
names, deadline, retries, concurrency) that every API backend builds from its user config.

The API key is read from the environment (the first non-empty variable of ``api_key_envs``) each time it
is needed: it is never an attribute, never in ``repr``, and every form of it (raw, escaped, URL-encoded,
quoted: :mod:`dtwinseg.redaction`) is replaced by ``***`` in every log line, error message and answer (a
server that echoes the key in a 200 answer does not put it into predictions or twins). A key with a
control character (a newline pasted with it) is refused before any request, without showing it. Users: :class:`dtwinseg.perception.vlm.OpenAIVLM` and
:class:`dtwinseg.reasoning.backends.OpenAIBackend`.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dtwinseg.io import DataError
from dtwinseg.redaction import redact_text, register_secret_env

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
Messages = list[dict[str, Any]]


class ChatAnswer(str):
    """An answer's text (a str) that also carries the server's ``finish_reason`` ("stop", "length", ...
    or None when the server gave none): "length" means the answer hit ``max_tokens``."""

    finish_reason: str | None

    def __new__(cls, text: str, finish_reason: str | None = None) -> ChatAnswer:
        obj = super().__new__(cls, text)
        obj.finish_reason = finish_reason
        return obj


class ChatCompletionsError(RuntimeError):
    """A request failed for good; ``str()`` is ``"<url>: <detail>"`` with the key redacted.

    Attributes:
        kind: "http" (a non-200 status), "network" (timeout / connection error), "malformed" (a 200 whose
            body is not a chat-completions answer), "no_content" (the answer's content is null) or "config"
            (the API key variable holds something no request can carry).
        status: the HTTP status for "http", else None.
        cause: short, secret-free reason: the exception type name ("network", "malformed") or
            "null content"; "" for "http".
        detail: the redacted detail after the URL (e.g. ``"HTTP 500: <first 200 bytes of the body>"``).
        retried_out: True when the request was retryable and ``max_retries`` retries were all used.
    """

    def __init__(self, url: str, kind: str, detail: str, *, status: int | None = None, cause: str = "",
                 retried_out: bool = False):
        super().__init__(f"{url}: {detail}")
        self.kind, self.detail, self.status, self.cause, self.retried_out = kind, detail, status, cause, retried_out


@dataclass
class EndpointFields:
    """The endpoint fields of a user config, declared once: ReasoningConfig, VLMConfig and TeacherConfig
    inherit them, so their YAML keys stay flat (``base_url:``, ``api_key_env:``, ...). A config may set
    another default by redeclaring a field (the teacher waits longer); its parallelism is its own field
    (``concurrency``, or ``max_concurrency`` for the VLM). :meth:`endpoint` turns them into the
    :class:`EndpointConfig` the client uses.

    Attributes:
        base_url: OpenAI-compatible base URL (".../v1"); a local vLLM / SGLang server works too.
        api_key_env: name of the environment variable holding the API key (the key itself is never stored
            in a config, logged or written to a report).
        timeout_s: whole-request deadline of one HTTP attempt in seconds (connect, send, headers, body).
        max_retries: retries of a request on 429 / 5xx / timeouts / connection errors.
        backoff_s: first retry delay in seconds, doubling per attempt (a Retry-After header wins).
    """

    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0

    def check_endpoint(self, path: str | os.PathLike | None = None) -> None:
        """DataError naming the field when a retry / deadline setting is out of its domain."""
        if int(self.max_retries) < 0 or float(self.backoff_s) < 0:
            raise DataError(path, "max_retries" if int(self.max_retries) < 0 else "backoff_s", "must be >= 0")
        if float(self.timeout_s) <= 0:
            raise DataError(path, "timeout_s", "must be > 0")

    def endpoint(self, *, extra_key_envs: Sequence[str] = (), **policy: Any) -> EndpointConfig:
        """The :class:`EndpointConfig` these fields describe (``policy``: backoff cap, jitter, ...)."""
        return EndpointConfig.from_fields(self, extra_key_envs=extra_key_envs, **policy)


# Names an endpoint's settings carry in a user config: EndpointFields plus its parallelism.
ENDPOINT_FIELDS = (*(f.name for f in dataclasses.fields(EndpointFields)), "concurrency")


@dataclass
class EndpointConfig:
    """How to reach an OpenAI-compatible server: the one set of endpoint settings behind every API backend
    (the reasoning backend and the VLM both build theirs with :meth:`from_fields`). Only NAMES of key
    variables are fields, never a key.

    Attributes:
        base_url: OpenAI-compatible base URL (".../v1").
        api_key_envs: environment variables tried in order for the key (none set: no Authorization header).
        timeout_s: deadline of one HTTP attempt in seconds: connect, send, headers and the whole body
            (not per socket read, so a trickling server cannot stretch it).
        max_retries: retries of a retryable failure (so at most ``max_retries + 1`` attempts).
        backoff_s: first retry delay in seconds; doubles per attempt, capped at ``backoff_max_s``.
        backoff_max_s: cap of the exponential delay (seconds).
        retry_after_max_s: cap of a server's Retry-After delay (seconds; None: ``backoff_max_s``).
        jitter: (low, high) multipliers; the exponential delay is scaled by a uniform draw in that range.
        concurrency: parallel requests in ``complete_many``.
    """

    base_url: str
    api_key_envs: tuple[str, ...] = ("OPENAI_API_KEY",)
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    retry_after_max_s: float | None = None
    jitter: tuple[float, float] = (0.5, 1.0)
    concurrency: int = 8

    def __post_init__(self) -> None:
        for name in self.api_key_envs:  # their values are secrets wherever they would be written
            register_secret_env(name)

    @classmethod
    def from_fields(cls, config: Any, *, extra_key_envs: Sequence[str] = (), **policy: Any) -> EndpointConfig:
        """The endpoint a user config describes with :data:`ENDPOINT_FIELDS` (``max_concurrency`` is read
        as ``concurrency``); ``extra_key_envs`` are tried before its ``api_key_env``; ``policy`` sets the
        remaining fields (backoff cap, jitter, ...)."""
        concurrency = getattr(config, "concurrency", getattr(config, "max_concurrency", cls.concurrency))
        return cls(base_url=config.base_url, api_key_envs=(*extra_key_envs, config.api_key_env),
                   timeout_s=config.timeout_s, max_retries=config.max_retries, backoff_s=config.backoff_s,
                   concurrency=concurrency, **policy)


@dataclass
class ChatClientConfig(EndpointConfig):
    """An endpoint plus the ``model`` field of every request."""

    model: str = ""

    @classmethod
    def for_model(cls, endpoint: EndpointConfig, model: str) -> ChatClientConfig:
        return cls(**{f: getattr(endpoint, f) for f in endpoint.__dataclass_fields__}, model=model)


class ChatCompletionsClient:
    """Chat completions over HTTP: retried, bounded-concurrent, key-redacting.

    ``stats`` counts ``requests`` (HTTP attempts), ``retries`` and ``failures`` (requests that raised);
    it is updated under a lock and safe to read at any time. ``sleep`` is injectable for tests.
    """

    def __init__(self, config: ChatClientConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._sleep = sleep
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # the key is never an attribute; say so by showing only safe fields
        return f"ChatCompletionsClient(model={self.config.model!r}, url={self.url!r})"

    def _api_key(self) -> str:
        return next((v for v in (os.environ.get(n, "") for n in self.config.api_key_envs) if v), "")

    def _key_variable(self) -> str:
        return next((n for n in self.config.api_key_envs if os.environ.get(n)), "")

    def redact(self, text: str) -> str:
        """``text`` with every form of the current API key (and of any live secret) replaced by ``***``."""
        key = self._api_key()
        return redact_text(text, [key] if key else None)

    def check_key(self) -> None:
        """ChatCompletionsError ("config") when the key holds a character no HTTP header may carry (a
        newline pasted with it, ...): named by its variable, never shown."""
        key = self._api_key()
        bad = next((c for c in key if ord(c) < 0x20 or ord(c) == 0x7F or ord(c) > 0xFF), None)
        if bad is not None:
            what = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}.get(bad, f"character U+{ord(bad):04X}")
            raise self._fail("config", f"the API key in ${self._key_variable()} contains {what}; set the "
                                       "variable to the key alone", cause="bad key")

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def backoff(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry ``attempt + 1``: Retry-After (seconds or HTTP date, capped at
        ``retry_after_max_s``) when given, else ``backoff_s * 2**attempt`` capped and jittered."""
        cfg = self.config
        wait = _retry_after_seconds(retry_after)
        if wait is not None:
            return min(wait, cfg.backoff_max_s if cfg.retry_after_max_s is None else cfg.retry_after_max_s)
        low, high = cfg.jitter
        return min(cfg.backoff_s * 2 ** attempt, cfg.backoff_max_s) * random.uniform(low, high)

    def _post(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """One HTTP attempt under a whole-request deadline (connect + send + headers + body within
        ``timeout_s``): a watchdog shuts the socket down when the deadline passes, so a server that trickles
        one byte at a time cannot keep the request alive. Raises TimeoutError then."""
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = self.config.timeout_s
        conn, path, proxy_headers = _connection(self.url, timeout)
        headers.update(proxy_headers)
        expired = threading.Event()

        def abort() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(timeout, abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", path, body=data, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if expired.is_set():
                raise TimeoutError(f"timed out: no complete answer within {timeout:g} s")
            return resp.status, dict(resp.headers), body
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise TimeoutError(f"timed out: no complete answer within {timeout:g} s") from e
            raise
        finally:
            watchdog.cancel()
            conn.close()

    def _fail(self, kind: str, detail: str, **kw: Any) -> ChatCompletionsError:
        self._count("failures")
        return ChatCompletionsError(self.url, kind, self.redact(detail), **kw)

    def complete(self, messages: Messages, **params: Any) -> str:
        """The answer text for one conversation; ``params`` (max_tokens, temperature, ...) go into the body.

        Raises ChatCompletionsError once retries are used up, on a non-retryable status, or on a body that
        is not a chat-completions answer."""
        self.check_key()
        data = json.dumps({"model": self.config.model, "messages": messages, **params}).encode("utf-8")
        for attempt in range(max(0, self.config.max_retries) + 1):
            self._count("requests")
            headers: dict[str, str] = {}
            try:
                status, headers, body = self._post(data)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
                kind, status, cause = "network", None, type(e).__name__
                detail = f"connection error: {cause}: {e}"
            else:
                if status == 200:
                    return self._answer(body)
                kind, cause = "http", ""  # redacted whole, then cut: a cut never leaves part of a key
                detail = f"HTTP {status}: {self.redact(body[:65536].decode('utf-8', 'replace'))[:200]}"
                if status not in RETRY_STATUS:
                    raise self._fail(kind, detail, status=status)
            if attempt < self.config.max_retries:
                self._count("retries")
                delay = self.backoff(attempt, _header(headers, "Retry-After"))
                log.warning("chat request failed (%s); retry %d in %.1fs", self.redact(detail), attempt + 1, delay)
                self._sleep(delay)
        raise self._fail(kind, detail, status=status, cause=cause, retried_out=True)

    def _answer(self, body: bytes) -> str:
        try:
            choice = json.loads(body)["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            name = type(e).__name__
            raise self._fail("malformed", f"not a chat-completions answer ({name})", cause=name) from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is None:
            raise self._fail("no_content", "answer has null content", cause="null content")
        if not isinstance(content, str):
            raise self._fail("malformed", "not a chat-completions answer (TypeError)", cause="TypeError")
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        return ChatAnswer(self.redact(content), finish if isinstance(finish, str) else None)

    def complete_many(self, conversations: Sequence[Messages], **params: Any) -> list[str | ChatCompletionsError]:
        """``complete`` for each conversation on at most ``concurrency`` threads; answers and errors come
        back in input order (an error takes its request's place instead of raising)."""
        if not conversations:
            return []

        def one(messages: Messages) -> str | ChatCompletionsError:
            try:
                return self.complete(messages, **params)
            except ChatCompletionsError as e:
                return e

        workers = max(1, min(self.config.concurrency, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, conversations))


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """An unopened connection for ``url`` (through the environment's HTTP(S)_PROXY unless NO_PROXY says
    otherwise), the request target to send, and the headers the proxy needs (its credentials)."""
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme == "https"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
        return cls(parts.hostname or "", parts.port, timeout=timeout), target, {}
    p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    auth = {}
    if p.username:
        creds = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode("ascii")
    if https:  # CONNECT tunnel through the proxy, then TLS to the server
        conn = http.client.HTTPSConnection(p.hostname or "", p.port, timeout=timeout)
        conn.set_tunnel(parts.hostname or "", parts.port, headers=auth)
        return conn, target, {}
    return http.client.HTTPConnection(p.hostname or "", p.port, timeout=timeout), url, auth


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None
