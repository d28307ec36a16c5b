"""A prefetching loader for many images: while the current image is in SAM / the VLM, background threads
already decode the next ones, so a long ``build-dt`` run is bound by the model, not by JPEG decoding.

    for sample, image in prefetch(samples, lambda s: decode_rgb(s.image_path), depth=4):
        twin = builder.build(image, sample.query, sample.id)   # image: a PIL image, or the Exception

Order is kept; a failing item yields its exception in place of the result (a long job never dies on one
bad image); at most ``depth`` items are prepared ahead (bounded memory). Decoding (PIL, numpy) releases the
GIL, so the threads overlap with the model's work.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from PIL import Image

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], fn: Callable[[T], R], *, depth: int = 2, workers: int = 2
             ) -> Iterator[tuple[T, R | Exception]]:
    """Yield ``(item, fn(item))`` in order, computing ``fn`` for up to ``depth`` items ahead in
    ``workers`` threads; an exception raised by ``fn`` is yielded in place of its result."""
    if depth < 1 or workers < 1:
        raise ValueError(f"depth and workers must be >= 1, got {depth}, {workers}")
    it = iter(items)
    pending: deque[tuple[T, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch") as pool:
        def submit_next() -> None:
            for item in it:
                pending.append((item, pool.submit(fn, item)))
                return

        for _ in range(depth):
            submit_next()
        while pending:
            item, fut = pending.popleft()
            submit_next()
            try:
                result: R | Exception = fut.result()
            except Exception as e:  # noqa: BLE001 - handed to the caller with its item
                result = e
            yield item, result


def decode_rgb(path: str | os.PathLike) -> Image.Image:
    """A fully decoded RGB PIL image (a truncated file fails here, in the prefetch thread)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")
