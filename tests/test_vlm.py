"""VLM backends (a real loopback chat-completions server; a tiny random LLaVA) and the answer parsers."""

import json
import logging

import pytest
from PIL import Image

from dtwinseg.perception import prompts
from dtwinseg.perception.vlm import (
    OpenAIVLM,
    TransformersVLM,
    VLMConfig,
    VLMError,
    VLMRequest,
    assign_semantics,
    decide_granularity,
    make_vlm,
)
from tests.perception_helpers import ChatServer, save_tiny_llava, tiny_llava

KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.mark.parametrize("answer,level,fell_back", [
    ("2", 2, False), ("Level: 0", 0, False), ("The answer is 1.", 1, False), ("part", 2, False),
    ("a group of objects", 0, False), ("1.5", 1, True), ("", 1, True), ("banana", 1, True),
    ("object or part", 1, True), ("12", 1, True),
])
def test_parse_granularity(answer, level, fell_back):
    assert prompts.parse_granularity(answer) == (level, fell_back)


@pytest.mark.parametrize("answer,strategy,text,fell_back", [
    ("red mug", "direct", "red mug", False),
    ('"red mug."\nextra', "in_context", "red mug", False),
    ("Observation: a mug on a desk.\nDescription: red ceramic mug", "system", "red ceramic mug", False),
    ("observation: only this line", "system", "", True),
    ("   ", "direct", "", True),
    ("*** 123 ***", "direct", "", True),
])
def test_parse_semantic(answer, strategy, text, fell_back):
    assert prompts.parse_semantic(answer, strategy) == (text, fell_back)


def test_semantic_prompts_differ_per_strategy_and_reject_unknown():
    users = {s: prompts.semantic_messages("the cup", s)[1] for s in prompts.STRATEGIES}
    assert len(set(users.values())) == 3 and all('"the cup"' in u for u in users.values())
    assert "Description:" in users["system"] and "Examples" in users["in_context"]
    with pytest.raises(ValueError, match="strategy"):
        prompts.semantic_messages("q", "chain")


def test_config_refuses_keys_and_unknown_fields():
    with pytest.raises(ValueError, match="never put a key"):
        VLMConfig.from_dict({"backend": "openai", "api_key": KEY})
    with pytest.raises(ValueError, match=r"vlm\.modle.*did you mean 'vlm\.model'"):
        VLMConfig.from_dict({"backend": "openai", "modle": "x"})
    with pytest.raises(ValueError, match=r"vlm\.max_retries.*integer"):
        VLMConfig.from_dict({"backend": "openai", "max_retries": "many"})
    with pytest.raises(ValueError, match="backend"):
        VLMConfig(backend="claude")
    assert make_vlm(VLMConfig()) is None


def image(color=(200, 30, 30), size=(48, 32)):
    return Image.new("RGB", size, color)


def openai_cfg(server, **kw):
    return VLMConfig(backend="openai", model="gpt-4o", base_url=server.base_url, api_key_env="MY_VLM_KEY",
                     backoff_s=0.01, backoff_max_s=0.05, timeout_s=10, **kw)


def test_openai_granularity_with_429_then_success(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("MY_VLM_KEY", KEY)
    monkeypatch.delenv("DTWINSEG_VLM_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)
    with ChatServer(script=[(429, "slow down"), (200, "2")]) as srv:
        vlm = make_vlm(openai_cfg(srv))
        assert isinstance(vlm, OpenAIVLM)
        assert decide_granularity(vlm, image(), "the handle of the mug") == (2, False)
    assert len(srv.requests) == 2 and vlm.stats["retries"] == 1
    assert srv.auth == [f"Bearer {KEY}"] * 2
    req = srv.requests[-1]
    assert req["model"] == "gpt-4o" and req["messages"][0]["role"] == "system"
    parts = req["messages"][1]["content"]
    assert parts[0]["type"] == "text" and "the handle of the mug" in parts[0]["text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "429" in caplog.text and KEY not in caplog.text and KEY not in repr(vlm)
    # the config that would be saved with a cache holds the variable name, never the key
    saved = tmp_path / "cfg.json"
    saved.write_text(json.dumps(openai_cfg(srv).to_dict()))
    assert KEY not in saved.read_text() and "MY_VLM_KEY" in saved.read_text()


def test_openai_500_exhausts_retries_and_key_stays_secret(monkeypatch, caplog):
    monkeypatch.setenv("DTWINSEG_VLM_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with ChatServer(default=(500, f"internal error, your key {KEY} is fine")) as srv:
        vlm = make_vlm(openai_cfg(srv, max_retries=2))
        with pytest.raises(VLMError, match="HTTP 500") as err:
            vlm.chat([VLMRequest("hi", [image()])])
    assert len(srv.requests) == 3 and vlm.stats["failures"] == 1
    assert KEY not in str(err.value) and KEY not in caplog.text


def test_openai_client_errors_are_not_retried_and_bad_json_fails(monkeypatch):
    monkeypatch.setenv("DTWINSEG_VLM_API_KEY", KEY)
    with ChatServer(script=[(400, "bad request")]) as srv:
        with pytest.raises(VLMError, match="HTTP 400"):
            make_vlm(openai_cfg(srv)).chat([VLMRequest("hi")])
    assert len(srv.requests) == 1
    with ChatServer(default=(200, b'{"not": "chat"}')) as srv:
        with pytest.raises(VLMError, match="not a chat-completions answer"):
            make_vlm(openai_cfg(srv)).chat([VLMRequest("hi")])


def test_openai_garbage_answers_fall_back_and_are_counted(monkeypatch):
    monkeypatch.setenv("DTWINSEG_VLM_API_KEY", KEY)
    with ChatServer(default=(200, "I cannot tell ¯\\_(ツ)_/¯")) as srv:
        vlm = make_vlm(openai_cfg(srv))
        assert decide_granularity(vlm, image(), "q") == (1, True)
        texts, fallbacks = assign_semantics(vlm, [(image(), image())] * 3, "q", "system")
    # "system" wants a Description line; without one the first non-observation line is used
    assert texts == ["I cannot tell ¯\\_(ツ)_/¯"] * 3 and fallbacks == 0
    with ChatServer(default=(200, "   ")) as srv:
        texts, fallbacks = assign_semantics(make_vlm(openai_cfg(srv)), [(image(), image())] * 2, "q", "direct")
    assert texts == ["", ""] and fallbacks == 2


def test_openai_concurrency_limit_and_order(monkeypatch):
    monkeypatch.setenv("DTWINSEG_VLM_API_KEY", KEY)

    def echo(body):
        return "Description: " + body["messages"][-1]["content"][0]["text"].split("query about the image is: ")[1][:7]

    with ChatServer(answer_fn=echo, delay_s=0.05) as srv:
        vlm = make_vlm(openai_cfg(srv, max_concurrency=3))
        reqs = [VLMRequest(prompts.semantic_messages(f"q{i:02d}", "system")[1], [image()]) for i in range(12)]
        answers = vlm.chat(reqs)
    assert [a.split(": ")[1].strip() for a in answers] == [f'"q{i:02d}"' for i in range(12)]
    assert 1 < srv.max_in_flight <= 3


def test_openai_timeout_is_retried_then_fails(monkeypatch):
    monkeypatch.setenv("DTWINSEG_VLM_API_KEY", KEY)
    with ChatServer(default=(200, "1"), delay_s=0.6) as srv:
        vlm = make_vlm(openai_cfg(srv, max_retries=1).__class__(**{**openai_cfg(srv, max_retries=1).to_dict(),
                                                                    "timeout_s": 0.2}))
        with pytest.raises(VLMError, match="connection error"):
            vlm.chat([VLMRequest("hi")])
    assert vlm.stats["retries"] == 1


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("llava"))


def test_transformers_backend_loads_from_path_and_batches(llava_dir):
    vlm = make_vlm(VLMConfig(backend="transformers", model=str(llava_dir), max_new_tokens=4, batch_size=3,
                             device="cpu"))
    assert isinstance(vlm, TransformersVLM)
    reqs = [VLMRequest("Answer with a digit", [image()], system="sys"),
            VLMRequest("Describe", [image((0, 0, 255), (20, 60)), image()]),
            VLMRequest("Observation:", [image((0, 255, 0))])]
    batched = vlm.chat(reqs)
    single = [vlm.chat([r])[0] for r in reqs]
    assert len(batched) == 3 and all(isinstance(a, str) for a in batched)
    assert batched == single   # left padding: batching does not change greedy answers


def test_transformers_backend_drives_both_uses(llava_dir):
    model, processor = tiny_llava()
    vlm = TransformersVLM(VLMConfig(backend="transformers", model="tiny", max_new_tokens=3), model, processor)
    level, fell_back = decide_granularity(vlm, image(), "the roof")
    assert level in (0, 1, 2) and isinstance(fell_back, bool)
    texts, fallbacks = assign_semantics(vlm, [(image(), image())] * 2, "the roof", "direct")
    assert len(texts) == 2 and 0 <= fallbacks <= 2
    assert all(prompts.parse_semantic(t, "direct")[0] == t for t in texts if t)
