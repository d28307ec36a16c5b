"""TEST DOUBLE (tests and benchmarks only): planted SAM outputs, a realistic mask load from a random-weight SAM.

A random SAM returns either no mask that survives the default thresholds or salt-and-pepper masks, so the
post-processing would be timed and tested on the wrong load. :func:`plant` patches a ``Sam`` model so that
its mask decoder returns smooth blob-like logits derived from the prompt point: a synthetic scene of
nested elliptic blobs (groups > objects > parts), each point returning the smallest three blobs that
contain it (SAM's subpart / part / whole), with per-point jitter so that neighbouring points give slightly
different masks, as on real photos. Every pipeline that calls ``model.prompt_encoder`` then
``model.mask_decoder`` (SamAutomaticMaskGenerator, ProposalGenerator) sees the same planted outputs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class BlobScene:
    """K elliptic blobs in SAM's 1024 x 1024 input frame.

    Attributes:
        centers: K x 2 (x, y) in input-frame pixels.
        radii: K x 2 (a, b) semi-axes in input-frame pixels.
        slopes: K logit increase per low-res pixel inside the boundary (higher = more stable mask).
        ious: K predicted IoU the decoder reports for the blob.
    """

    centers: np.ndarray
    radii: np.ndarray
    slopes: np.ndarray
    ious: np.ndarray

    def __len__(self) -> int:
        return len(self.centers)


def make_scene(input_hw: tuple[int, int], n_groups: int = 12, seed: int = 0) -> BlobScene:
    """Random nested scene inside the image region ``input_hw`` (SAM's resized image size, H x W):
    ``n_groups`` groups of 1-3 objects with 0-2 parts each."""
    rng = np.random.default_rng(seed)
    h, w = input_hw
    centers, radii, slopes, ious = [], [], [], []

    def add(c: np.ndarray, r: np.ndarray) -> None:
        centers.append(c)
        radii.append(r)
        slopes.append(rng.uniform(3.0, 25.0))
        ious.append(rng.uniform(0.84, 1.0))

    def child_of(c: np.ndarray, r: np.ndarray, frac: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        cr = r * rng.uniform(*frac, size=2)
        room = np.maximum(r - cr, 0) * 0.6
        return c + rng.uniform(-1, 1, size=2) * room, cr

    for _ in range(n_groups):
        r = rng.uniform(0.08, 0.22, size=2) * min(h, w)
        c = np.array([rng.uniform(r[0], w - r[0]), rng.uniform(r[1], h - r[1])])
        add(c, r)
        for _ in range(rng.integers(1, 4)):
            oc, orad = child_of(c, r, (0.35, 0.6))
            add(oc, orad)
            for _ in range(rng.integers(0, 3)):
                add(*child_of(oc, orad, (0.3, 0.5)))
    return BlobScene(np.array(centers), np.array(radii), np.array(slopes), np.array(ious))


def _chains(scene: BlobScene, coords: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For B prompts: the 3 blobs each returns (B*3 flat, smallest first, padded by repeating the largest),
    whether it hit any blob (B*3), the prompt per mask (B*3 x 2) and a deterministic jitter in [-1, 1]."""
    p = coords.detach().double().cpu().numpy().reshape(-1, 2)
    c, r = scene.centers, scene.radii
    d = (((p[:, None, :] - c[None]) / r[None]) ** 2).sum(-1)  # B x K, < 1 inside
    order = np.argsort(np.where(d < 1, r.prod(1)[None], np.inf), axis=1, kind="stable")[:, :3]
    n_in = (np.take_along_axis(d, order, axis=1) < 1).sum(1)
    pad = np.minimum(np.arange(3)[None], np.maximum(n_in - 1, 0)[:, None])
    blob = np.take_along_axis(order, pad, axis=1).reshape(-1)
    hit = np.repeat(n_in > 0, 3)
    pk = np.repeat(p, 3, axis=0)
    jit = np.sin(pk[:, 0] * 12.9898 + pk[:, 1] * 78.233)
    return blob, hit, pk, jit


def planted_ious(scene: BlobScene, coords: torch.Tensor) -> torch.Tensor:
    """Predicted IoUs B x 3 the planted decoder reports for prompts ``coords`` (B x 2, input frame)."""
    blob, hit, _, jit = _chains(scene, coords)
    ious = np.where(hit, scene.ious[blob] - 0.01 * (1 + jit) / 2, 0.2)
    return torch.tensor(ious, dtype=torch.float32).reshape(-1, 3).to(coords.device)


def planted_outputs(scene: BlobScene, coords: torch.Tensor, low_res: int = 256
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder outputs for point prompts ``coords`` (B x 2, input frame): logits B x 3 x low_res x low_res
    and predicted IoUs B x 3 (float32, on coords' device)."""
    blob, hit, pk, jit = _chains(scene, coords)
    c, r = scene.centers, scene.radii
    # point-dependent jitter: the mask drifts slightly towards the prompt, as real SAM masks do
    cen = c[blob] + 0.04 * (pk - c[blob])
    rad = r[blob] * (1.0 + 0.015 * jit[:, None])
    scale = low_res / 1024.0
    g = torch.arange(low_res, dtype=torch.float32) + 0.5
    cx, cy = (torch.tensor(cen[:, k] * scale, dtype=torch.float32)[:, None, None] for k in (0, 1))
    ax, ay = (torch.tensor(rad[:, k] * scale, dtype=torch.float32)[:, None, None] for k in (0, 1))
    dist = torch.sqrt(((g[None, None, :] - cx) / ax) ** 2 + ((g[None, :, None] - cy) / ay) ** 2)
    slope = torch.tensor(scene.slopes[blob], dtype=torch.float32)[:, None, None]
    logits = (slope * (1.0 - dist) * torch.minimum(ax, ay)).clamp(-30, 30)
    logits[~torch.from_numpy(hit)] = -20.0
    return logits.reshape(-1, 3, low_res, low_res).to(coords.device), planted_ious(scene, coords)


@contextlib.contextmanager
def plant(model: Any, scene: BlobScene, *, run_decoder: bool = True, overhead: dict | None = None
          ) -> Iterator[None]:
    """Within the block, ``model.mask_decoder`` (and its FastMaskDecoder) return the planted outputs for
    the last points given to ``model.prompt_encoder``. ``run_decoder`` still runs the real decoder first
    (real timing). ``overhead["s"]`` accumulates the seconds spent in the planted scene's own work
    (generating / copying the planted outputs and IoUs), which benchmarks subtract from both pipelines."""
    from dtwinseg.perception.fast_decoder import fast_decoder_for

    pe = model.prompt_encoder
    orig_pe = pe.forward
    last: dict[str, torch.Tensor] = {}
    memo: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def pe_forward(points: Any = None, boxes: Any = None, masks: Any = None) -> Any:
        last["coords"] = points[0][:, 0, :]
        return orig_pe(points=points, boxes=boxes, masks=masks)

    gate_memo: dict[tuple[bytes, int, int], torch.Tensor] = {}
    spent = overhead if overhead is not None else {}
    spent.setdefault("s", 0.0)

    def timed(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            spent["s"] += time.perf_counter() - t0
            return out
        return run

    @timed
    def outputs(multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = last["coords"].detach().cpu().numpy().tobytes()
        if key not in memo:  # generated once per prompt set
            memo[key] = planted_outputs(scene, last["coords"])
        logits, ious = (t.clone() for t in memo[key])
        return (logits, ious) if multimask else (logits[:, :1], ious[:, :1])

    def planted_forward(orig: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if run_decoder:
                orig(*args, **kwargs)
            return outputs(kwargs.get("multimask_output", True))
        return forward

    @timed
    def gate(start: int, end: int) -> torch.Tensor:
        key = (last["coords"].detach().cpu().numpy().tobytes(), start, end)
        if key not in gate_memo:
            gate_memo[key] = planted_ious(scene, last["coords"][start:end])
        return gate_memo[key]

    fast = fast_decoder_for(model)
    decoders = (model.mask_decoder, fast)
    # the fast decoder's early rejection must see the planted IoUs, not the random model's
    fast.gate_ious = gate
    pe.forward = pe_forward
    for dec in decoders:
        dec.forward = planted_forward(dec.forward)
    try:
        yield
    finally:
        del pe.forward
        fast.gate_ious = None
        for dec in decoders:
            del dec.forward


@contextlib.contextmanager
def fixed_encoder(model: Any, features: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model.image_encoder`` returns ``features`` (1 x 256 x 64 x 64) for any image:
    lets tests share one real encoder pass between pipelines."""
    enc = model.image_encoder

    def forward(x: torch.Tensor) -> torch.Tensor:
        return features.to(x.device).expand(x.shape[0], -1, -1, -1)

    enc.forward = forward
    try:
        yield
    finally:
        del enc.forward
