"""dtwinseg.runtime (shards, ranks, one progress bar per job, the device resolver) and the one endpoint
config shared by the API backends."""

from __future__ import annotations

import pytest

from dtwinseg.io import DataError
from dtwinseg.openai_chat import EndpointConfig
from dtwinseg.runtime import (
    ProgressBar,
    iter_positions,
    parse_shard,
    resolve_device,
    shard_indices,
    shard_suffix,
)


def test_shard_spec_text_env_and_errors():
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    assert parse_shard(None, {"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert parse_shard(None, {"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)  # RANK missing: LOCAL_RANK
    assert parse_shard(None, {}) == (0, 1) and parse_shard(None, {"WORLD_SIZE": "1", "RANK": "0"}) == (0, 1)
    for bad in ("4/4", "1/0", "a/b", "1-4", "-1/2"):
        with pytest.raises(DataError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(DataError, match="WORLD_SIZE"):
        parse_shard(None, {"WORLD_SIZE": "two"})
    with pytest.raises(DataError, match="RANK"):
        parse_shard(None, {"RANK": "3", "WORLD_SIZE": "2"})


def test_shards_partition_the_first_limit_samples():
    for n in (1, 2, 3, 5):
        parts = [shard_indices(11, (i, n), limit=9) for i in range(n)]
        assert sorted(k for p in parts for k in p) == list(range(9))
    assert shard_suffix((0, 1)) == "" and shard_suffix((2, 3)) == ".shard-2-of-3"


def test_iter_positions_random_access_and_one_pass():
    class Reader:
        def __init__(self):
            self.items = ["a", "b", "c", "d"]

        def __getitem__(self, k):
            if k == 2:
                raise ValueError("bad file")
            return self.items[k]

    out = list(iter_positions(Reader(), [0, 2, 3]))
    assert out[0] == (0, "a") and out[2] == (3, "d") and isinstance(out[1][1], ValueError)

    class OnePass:
        read = 0

        def __iter__(self):
            for x in "abcdef":
                OnePass.read += 1
                yield x

    assert list(iter_positions(OnePass(), [1, 3])) == [(1, "b"), (3, "d")] and OnePass.read == 4


def test_device_auto_takes_the_local_rank_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert resolve_device("auto", {"LOCAL_RANK": "5"}) == "cuda:1"  # more ranks than visible GPUs
    assert resolve_device("auto", {}) == "cuda:0"
    assert resolve_device("cuda:2", {"LOCAL_RANK": "3"}) == "cuda:2" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", {"LOCAL_RANK": "3"}) == "cpu"


def test_every_auto_device_goes_through_the_one_resolver(monkeypatch):
    from dtwinseg.perception import builder
    from dtwinseg.reasoning import backends
    from dtwinseg.runtime import resolve_device as one

    assert backends.resolve_device is one
    monkeypatch.setattr("dtwinseg.runtime.local_rank", lambda env=None: 1)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert builder._device("auto") == "cuda:1"


def test_only_local_rank_0_draws_the_bar():
    with ProgressBar("x", 3, True, env={"LOCAL_RANK": "0"}) as bar:
        bar.advance(3)
        assert bar.drawn
    with ProgressBar("x", 3, True, env={"LOCAL_RANK": "1"}) as bar:
        bar.advance(3)
        assert not bar.drawn
    assert not ProgressBar("x", 3, False, env={}).drawn


def test_one_endpoint_config_for_the_vlm_and_the_reasoner():
    from dtwinseg.perception.vlm import VLMConfig
    from dtwinseg.reasoning import ReasoningConfig

    common = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "MY_KEY", "timeout_s": 7.0, "max_retries": 2,
              "backoff_s": 0.5}
    vlm = EndpointConfig.from_fields(VLMConfig(backend="openai", max_concurrency=3, **common),
                                     extra_key_envs=("DTWINSEG_VLM_API_KEY",))
    llm = EndpointConfig.from_fields(ReasoningConfig(backend="openai", concurrency=3, **common))
    assert vlm.api_key_envs == ("DTWINSEG_VLM_API_KEY", "MY_KEY") and llm.api_key_envs == ("MY_KEY",)
    vlm.api_key_envs = llm.api_key_envs
    assert vlm == llm and llm.concurrency == 3 and llm.timeout_s == 7.0
