"""The shared chat-completions client against a real HTTP server on 127.0.0.1 started by each test."""

from __future__ import annotations

import email.utils
import logging
import socket
import time

import pytest

from dtwinseg.openai_chat import ChatClientConfig, ChatCompletionsClient, ChatCompletionsError
from tests.perception_helpers import ChatServer

KEY = "sk-test-SHARED-0123456789abcdef"


def client(server_url: str, sleeps: list[float] | None = None, **kw) -> ChatCompletionsClient:
    cfg = ChatClientConfig(**{"base_url": server_url, "model": "m-test", "api_key_envs": ("FIRST_KEY", "SECOND_KEY"),
                              "timeout_s": 5.0, "max_retries": 3, "backoff_s": 1.0, "backoff_max_s": 3.0,
                              "jitter": (1.0, 1.0), **kw})
    return ChatCompletionsClient(cfg, sleep=(sleeps if sleeps is not None else []).append)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.delenv("FIRST_KEY", raising=False)
    monkeypatch.setenv("SECOND_KEY", KEY)


def test_retry_after_is_honoured_and_request_is_well_formed(key):
    sleeps: list[float] = []
    with ChatServer(script=[(429, "slow down"), (200, "hello")], retry_after="2.5") as srv:
        c = client(srv.url, sleeps)
        answer = c.complete([{"role": "user", "content": "hi"}], max_tokens=7, temperature=0.0)
    assert answer == "hello" and sleeps == [2.5]
    assert c.stats == {"requests": 2, "retries": 1, "failures": 0}
    assert srv.auth == [f"Bearer {KEY}"] * 2  # the first non-empty variable of api_key_envs
    assert srv.requests[0] == {"model": "m-test", "messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 7, "temperature": 0.0}


def test_5xx_backs_off_exponentially_then_raises_one_redacted_error(key, caplog):
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    with ChatServer(default=(503, f"overloaded, key {KEY}")) as srv:
        c = client(srv.url, sleeps)
        with pytest.raises(ChatCompletionsError) as err:
            c.complete([{"role": "user", "content": "hi"}])
    e = err.value
    assert (e.kind, e.status, e.retried_out) == ("http", 503, True)
    assert str(e).startswith(c.url + ": HTTP 503: ") and "***" in str(e)
    assert sleeps == [1.0, 2.0, 3.0]  # 1, 2, then capped at backoff_max_s
    assert len(srv.requests) == 4 and c.stats == {"requests": 4, "retries": 3, "failures": 1}
    assert "503" in caplog.text
    assert KEY not in str(e) and KEY not in caplog.text and KEY not in repr(c) and KEY not in repr(vars(c))


def test_other_4xx_is_not_retried(key):
    with ChatServer(script=[(401, "no")]) as srv:
        c = client(srv.url)
        with pytest.raises(ChatCompletionsError) as err:
            c.complete([{"role": "user", "content": "hi"}])
    assert (err.value.kind, err.value.status, err.value.retried_out) == ("http", 401, False)
    assert len(srv.requests) == 1 and c.stats["retries"] == 0


def test_connection_errors_and_timeouts_are_retried():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    c = client(f"http://127.0.0.1:{port}/v1/", sleeps, max_retries=2)
    with pytest.raises(ChatCompletionsError, match="connection error") as err:
        c.complete([{"role": "user", "content": "hi"}])
    assert err.value.kind == "network" and err.value.retried_out and len(sleeps) == 2
    assert c.url == f"http://127.0.0.1:{port}/v1/chat/completions"
    with ChatServer(delay_s=0.5) as srv:
        c = client(srv.url, timeout_s=0.1, max_retries=1)
        with pytest.raises(ChatCompletionsError) as err:
            c.complete([{"role": "user", "content": "hi"}])
    assert err.value.kind == "network" and "timed out" in str(err.value) and c.stats["requests"] == 2


@pytest.mark.parametrize("payload,kind,cause", [
    (b'{"not": "chat"}', "malformed", "KeyError"),
    (b"<html>oops</html>", "malformed", "JSONDecodeError"),
    (b'{"choices": [{"message": {"content": null}}]}', "no_content", "null content"),
])
def test_bad_answers_are_typed_errors_without_retry(payload, kind, cause):
    with ChatServer(default=(200, payload)) as srv:
        c = client(srv.url)
        with pytest.raises(ChatCompletionsError) as err:
            c.complete([{"role": "user", "content": "hi"}])
    assert (err.value.kind, err.value.cause) == (kind, cause) and len(srv.requests) == 1


def test_content_parts_are_joined():
    parts = b'{"choices": [{"message": {"content": [{"type": "text", "text": "ab"}, {"text": "c"}, 5]}}]}'
    with ChatServer(default=(200, parts)) as srv:
        assert client(srv.url).complete([{"role": "user", "content": "hi"}]) == "abc"


def test_complete_many_keeps_order_bounds_concurrency_and_returns_errors_in_place():
    def echo(body):
        return body["messages"][0]["content"].upper()

    with ChatServer(answer_fn=echo, delay_s=0.05) as srv:
        c = client(srv.url, concurrency=3)
        convs = [[{"role": "user", "content": f"q{i:02d}"}] for i in range(10)]
        assert c.complete_many(convs) == [f"Q{i:02d}" for i in range(10)]
        assert c.complete_many([]) == []
    assert 1 < srv.max_in_flight <= 3 and len(srv.requests) == 10
    with ChatServer(script=[(200, "a"), (400, "bad")], default=(200, "z")) as srv:
        out = client(srv.url, concurrency=1).complete_many([[{"role": "user", "content": "x"}]] * 3)
    assert out[0] == "a" and out[2] == "z"
    assert isinstance(out[1], ChatCompletionsError) and out[1].status == 400


def test_backoff_caps_retry_after_and_reads_http_dates():
    c = client("http://127.0.0.1:1/v1", retry_after_max_s=10.0, jitter=(0.5, 1.0))
    assert c.backoff(0, "7") == 7.0 and c.backoff(0, "120") == 10.0
    in_5s = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= c.backoff(0, in_5s) <= 5.0
    assert all(0.5 <= c.backoff(0, bad) <= 1.0 for bad in (None, "", "soon"))
    assert 1.5 <= c.backoff(5) <= 3.0  # 32 s capped at backoff_max_s, then jittered
