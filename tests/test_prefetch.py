"""The prefetching image loader (dtwinseg.perception.prefetch): order, errors in place, overlap, bound."""

import threading
import time

import numpy as np
import pytest
from PIL import Image

from dtwinseg.perception.prefetch import decode_rgb, prefetch


def test_order_errors_and_bounded_lookahead():
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        if i == 3:
            raise ValueError("bad image 3")
        return i * 10

    out = []
    for item, res in prefetch(range(8), work, depth=2, workers=2):
        with lock:
            # never more than `depth` items prepared beyond the one being consumed
            assert max(started) <= item + 2
        out.append((item, res))
    assert [i for i, _ in out] == list(range(8))
    assert [r for i, r in out if i != 3] == [i * 10 for i in range(8) if i != 3]
    assert isinstance(out[3][1], ValueError) and "bad image 3" in str(out[3][1])
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(range(2), work, depth=0))


def test_work_overlaps_with_the_consumer():
    """4 items of 0.2 s work and 0.2 s consumer time each: sequential 1.6 s, prefetched ~0.8 s."""
    def slow(i: int) -> int:
        time.sleep(0.2)
        return i

    t0 = time.perf_counter()
    for _ in prefetch(range(4), slow, depth=2, workers=1):
        time.sleep(0.2)
    assert time.perf_counter() - t0 < 1.3


def test_decode_rgb_and_a_truncated_file(tmp_path):
    good, bad = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(np.full((6, 8, 3), 7, np.uint8)).save(good)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    results = dict(prefetch([good, bad], decode_rgb))
    assert results[good].size == (8, 6) and results[good].mode == "RGB"
    assert isinstance(results[bad], OSError)
