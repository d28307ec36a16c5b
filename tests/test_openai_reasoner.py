"""The openai backend against a real chat-completions server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json

import pytest
from perception_helpers import ChatServer
from reasoning_helpers import make_twin

from dtwinseg.reasoning import LLMReasoner, OpenAIBackend, ReasoningConfig

SECRET = "sk-test-SECRET-0123456789"


class QueryChatServer(ChatServer):
    """Answers by the last word of the query: 'busy' -> 429 once, 'broken' -> always 500,
    'garbage' -> prose without ids, 'bad' -> 400, else ``Answer: [<first object id>]``."""

    def __init__(self):
        super().__init__(respond_fn=self._respond, delay_s=0.05)  # the delay lets requests overlap
        self.seen_busy = 0

    def _respond(self, body: dict) -> tuple[int, str]:
        user = body["messages"][-1]["content"]
        word = user.rsplit("Query:", 1)[1].split()[-1] if "Query:" in user else ""
        if word == "busy":
            with self.lock:
                self.seen_busy += 1
                first = self.seen_busy == 1
            if first:
                return 429, "rate limited"
        if word == "broken":
            return 500, "boom"
        if word == "bad":
            return 400, "bad request"
        twin = json.loads(user.split("Digital Twin:\n", 1)[1].split("\n\nQuery:", 1)[0])
        return 200, "I am not sure." if word == "garbage" else f"Answer: [{sorted(twin, key=int)[0]}]"


@pytest.fixture
def server():
    with QueryChatServer() as s:
        yield s


def test_concurrent_requests_retries_and_failures(server, monkeypatch, capsys):
    monkeypatch.setenv("TEST_LLM_KEY", SECRET)
    cfg = ReasoningConfig(backend="openai", model="gpt-test", base_url=server.url, api_key_env="TEST_LLM_KEY",
                          concurrency=4, max_retries=2, backoff_s=0.0, max_new_tokens=64)
    sleeps: list[float] = []
    backend = OpenAIBackend(cfg, sleep=sleeps.append)
    twins = [make_twin(s, n=3) for s in range(6)]
    queries = ["the cup", "the busy", "a garbage", "the broken", "the bad", "a tree"]
    outs = LLMReasoner(cfg, backend).reason(list(zip(twins, queries, strict=True)))

    assert [o.ids for o in outs] == [[0], [0], [], [], [], [0]]
    assert [o.parse.status for o in outs] == ["ok", "ok", "failed", "failed", "failed", "ok"]
    assert outs[2].error is None and outs[2].text == "I am not sure."  # a parse failure, not an API error
    assert "HTTP 500 after 2 retries" in outs[3].error
    assert outs[4].error == "HTTP 400"  # not retried
    assert server.seen_busy == 2  # the 429 was retried once and then succeeded
    n_requests = 6 + 1 + 2  # one retry for the 429, two for the 500
    assert len(server.requests) == n_requests and backend.retries_used == 3 and sleeps == [0.0, 0.0, 0.0]
    assert server.max_in_flight > 1  # concurrent
    assert all(a == f"Bearer {SECRET}" for a in server.auth)
    body = server.requests[0]
    assert body["model"] == "gpt-test" and body["temperature"] == 0.0 and body["max_tokens"] == 64
    assert body["messages"][0]["role"] == "system"
    # the key never leaks into outputs, errors or the config
    dumped = json.dumps([o.to_dict() for o in outs]) + json.dumps(cfg.to_dict()) + capsys.readouterr().out
    assert SECRET not in dumped


def test_unreachable_server_is_a_counted_failure():
    cfg = ReasoningConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=1,
                          backoff_s=0.0, timeout_s=2.0)
    outs = LLMReasoner(cfg, OpenAIBackend(cfg, sleep=lambda s: None)).reason([(make_twin(0), "q")])
    assert outs[0].parse.status == "failed" and outs[0].error.startswith("network error")


def test_backoff_grows_and_honours_retry_after():
    b = OpenAIBackend(ReasoningConfig(backend="openai", backoff_s=1.0))
    assert b._backoff(0, "7") == 7.0
    assert 1.0 <= b._backoff(0, None) < b._backoff(2, None) <= 33.0


def test_budgets_per_twin_and_length_finish_is_truncated(monkeypatch):
    """max_new_tokens auto: each request's max_tokens comes from its twin's size; an answer the server
    ends with finish_reason "length" comes back truncated, counted apart from the parse status."""

    def respond(body: dict) -> tuple[int, bytes]:
        cut = "long" in body["messages"][-1]["content"]
        choice = {"index": 0, "message": {"role": "assistant", "content": "Answer: [0" if cut else "Answer: [0]"},
                  "finish_reason": "length" if cut else "stop"}
        return 200, json.dumps({"choices": [choice]}).encode()

    monkeypatch.setenv("TEST_LLM_KEY", SECRET)
    with ChatServer(respond_fn=respond, delay_s=0.1) as server:
        cfg = ReasoningConfig(backend="openai", model="m", base_url=server.url, api_key_env="TEST_LLM_KEY",
                              max_retries=0, format={"spatial": {"max_relations": 2}})
        r = LLMReasoner(cfg)
        small, large = make_twin(0, n=2), make_twin(1, n=12, size=64)
        outs = r.reason([(small, "the cup"), (large, "the long one"), (make_twin(2, n=3), "a"), (make_twin(3, n=4), "b")])
        budgets = sorted(b["max_tokens"] for b in server.requests)
    assert budgets[0] == r.budget(small) and budgets[-1] == r.budget(large) and len(set(budgets)) == 4
    assert server.max_in_flight > 1  # requests with different budgets still run concurrently
    assert [o.finish_reason for o in outs] == ["stop", "length", "stop", "stop"]
    assert outs[0].parse.status == "ok" and outs[1].truncated and outs[1].parse.notes[0].startswith("generation hit")
