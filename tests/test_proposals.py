"""SAM proposals on a random-weight vit_b, and parity with segment-anything's SamAutomaticMaskGenerator.

The image encoder runs once for the module (SAM always encodes at 1024 px: seconds on CPU); the
pipelines share its embedding through ``fixed_encoder``.
"""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from dtwinseg.perception.mask_ops import coco_rles
from dtwinseg.perception.proposals import ProposalConfig, ProposalGenerator, resolve_batching
from dtwinseg.twin import mask_bbox
from tests.planted_sam import fixed_encoder, make_scene, plant

pytestmark = pytest.mark.slow

IMAGE_HW = (150, 200)   # SAM input frame 768 x 1024


@pytest.fixture(scope="module")
def sam_and_features():
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*IMAGE_HW, 3), dtype=np.uint8)
    predictor = SamPredictor(sam)
    with torch.no_grad():
        predictor.set_image(image)   # the real encoder, once
    return sam, image, predictor.features.clone()


def amg_masks(sam, image, **kw):
    from segment_anything import SamAutomaticMaskGenerator

    anns = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **kw).generate(image)
    return anns


def match(ours_rles, amg_anns):
    """IoU matrix ours x AMG."""
    theirs = [a["segmentation"] for a in amg_anns]
    if not ours_rles or not theirs:
        return np.zeros((len(ours_rles), len(theirs)))
    return np.asarray(mask_utils.iou(coco_rles(ours_rles), theirs, [0] * len(theirs)))


def test_real_decoder_matches_amg_without_filters(sam_and_features):
    """Real random-weight decoder outputs, no filter: every candidate must come out identical."""
    sam, image, feats = sam_and_features
    kw = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    gen = ProposalGenerator(sam, ProposalConfig(**kw, refine=False, points_per_batch=5))
    with fixed_encoder(sam, feats):
        ours = gen.generate(image)
        theirs = amg_masks(sam, image, points_per_batch=4, **kw)
    assert len(ours) == len(theirs) == 27
    iou = match(ours.rles, theirs)
    nonempty = np.array([a["area"] > 0 for a in theirs])
    # each AMG mask has an identical mask among ours (empty masks have IoU 0 by convention)
    assert (iou.max(0)[nonempty] > 0.999).all()
    # same scores up to float noise (rounding both sides and comparing with == failed when a value sat on a
    # rounding boundary: 0.018985 -> 0.01898 on one side, 0.01899 on the other)
    np.testing.assert_allclose(np.sort(np.asarray(ours.predicted_iou, dtype=np.float64)),
                               np.sort([a["predicted_iou"] for a in theirs]), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def planted_pair(sam_and_features):
    """AMG's masks and ours (exact filters, the default, and the low-res option) on one planted scene."""
    sam, image, feats = sam_and_features
    scene = make_scene((768, 1024), n_groups=10, seed=3)
    out = {}
    with fixed_encoder(sam, feats), plant(sam, scene, run_decoder=False):
        out["amg"] = amg_masks(sam, image, points_per_side=12)
        for exact in (False, True):
            gen = ProposalGenerator(sam, ProposalConfig(points_per_side=12, refine=False, exact_filters=exact))
            out[exact] = gen.generate(image)
    return out


def test_default_is_amg_exact(planted_pair):
    """The default path gives SamAutomaticMaskGenerator's masks: every mask matched both ways at IoU >= 0.99."""
    assert ProposalConfig().exact_filters
    ours, theirs = planted_pair[True], planted_pair["amg"]
    assert len(theirs) >= 10, "the planted scene must give a realistic number of survivors"
    assert len(ours) == len(theirs)
    iou = match(ours.rles, theirs)
    assert (iou.max(1) >= 0.99).all() and (iou.max(0) >= 0.99).all()
    # matched masks carry the same scores, stability and boxes
    j = iou.argmax(1)
    assert np.allclose(ours.predicted_iou, [theirs[k]["predicted_iou"] for k in j], atol=1e-5)
    assert np.allclose(ours.stability, [theirs[k]["stability_score"] for k in j], atol=1e-4)
    xywh = np.array([theirs[k]["bbox"] for k in j])
    assert np.allclose(ours.boxes[:, :2], xywh[:, :2]) and np.allclose(ours.boxes[:, 2:] - ours.boxes[:, :2], xywh[:, 2:])


def test_planted_parity_with_amg_low_res_filters(planted_pair):
    """The approximate option decides stability / NMS on low-res logits: the same masks except
    near-threshold ones."""
    ours, theirs = planted_pair[False], planted_pair["amg"]
    iou = match(ours.rles, theirs)
    matched_ours, matched_amg = iou.max(1) >= 0.99, iou.max(0) >= 0.99
    assert matched_ours.mean() >= 0.85 and matched_amg.mean() >= 0.85
    assert abs(len(ours) - len(theirs)) <= max(2, len(theirs) // 10)
    j = iou.argmax(1)[matched_ours]
    assert np.allclose(ours.predicted_iou[matched_ours], [theirs[k]["predicted_iou"] for k in j], atol=1e-5)


def test_proposal_fields_are_consistent(sam_and_features):
    sam, image, feats = sam_and_features
    scene = make_scene((768, 1024), n_groups=6, seed=5)
    gen = ProposalGenerator(sam, ProposalConfig(points_per_side=8, points_per_batch=7, upsample_chunk=3))
    with fixed_encoder(sam, feats), plant(sam, scene, run_decoder=False):
        props = gen.generate(image)
    assert len(props) > 0
    masks = props.masks()
    assert masks.shape == (len(props), *IMAGE_HW)
    assert (props.areas() == masks.reshape(len(props), -1).sum(1)).all()
    for m, b in zip(masks, props.boxes, strict=True):
        assert tuple(b) == mask_bbox(m)
    assert (props.predicted_iou > 0.88).all() and (props.stability >= 0.95).all()
    # centroids (paper eq. 2) computed on the device before encoding = mean pixel coordinates
    for m, c in zip(masks, props.centroids, strict=True):
        ys, xs = np.nonzero(m)
        assert np.allclose(c, (xs.mean(), ys.mean()), atol=1e-3)
    # sorted by predicted IoU like AMG's NMS output
    assert (np.diff(props.predicted_iou) <= 1e-6).all()
    t = props.timings
    assert t["candidates"] == 64 * 3 and t["survivors"] == len(props)


def test_thresholds_change_the_result(sam_and_features):
    sam, image, feats = sam_and_features
    scene = make_scene((768, 1024), n_groups=8, seed=7)
    out = {}
    for theta in (0.80, 0.95):
        gen = ProposalGenerator(sam, ProposalConfig(points_per_side=8, pred_iou_thresh=theta))
        with fixed_encoder(sam, feats), plant(sam, scene, run_decoder=False):
            out[theta] = gen.generate(image)
    assert len(out[0.95]) < len(out[0.80])
    assert (out[0.95].predicted_iou > 0.95).all()


def test_bf16_encoder_and_decoder_precision_run_the_real_model(sam_and_features):
    sam, image, feats = sam_and_features
    cfg = ProposalConfig(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         box_nms_thresh=1.0, encoder_precision="bf16", decoder_precision="bf16")
    with fixed_encoder(sam, feats):
        gen = ProposalGenerator(sam, cfg)
        props = gen.generate(image)
    assert gen.predictor.features.dtype == torch.float32
    assert len(props) == 12 and props.predicted_iou.dtype == np.float32
    assert ProposalConfig().encoder_precision == "fp32"
    with pytest.raises(ValueError, match="encoder_precision"):
        ProposalConfig(encoder_precision="int8")


def test_single_mask_per_point_option(sam_and_features):
    sam, image, feats = sam_and_features
    cfg = ProposalConfig(points_per_side=3, multimask=False, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         box_nms_thresh=1.0)
    with fixed_encoder(sam, feats):
        props = ProposalGenerator(sam, cfg).generate(image)
    assert len(props) == 9 and props.timings["candidates"] == 9


@pytest.mark.parametrize("hw", [(150, 200), (768, 1024), (97, 61)])
def test_upsample_is_bit_identical_to_sam_postprocess(sam_and_features, hw):
    sam, _, feats = sam_and_features
    gen = ProposalGenerator(sam, ProposalConfig(points_per_side=2))
    with fixed_encoder(sam, feats):
        gen.set_image(np.zeros((*hw, 3), np.uint8))
    low = torch.randn(4, 256, 256) * 8
    ref = sam.postprocess_masks(low[:, None], gen.predictor.input_size, gen.predictor.original_size)[:, 0]
    assert torch.equal(gen.upsample(low), ref)


def test_batching_auto_from_the_device(monkeypatch):
    cfg = ProposalConfig()
    cpu = resolve_batching(cfg, "cpu")
    assert cpu == {"points_per_batch": 256, "decoder_chunk": 16, "upsample_chunk": 32, "roi_upsample": True}
    # a GPU with 100 GiB free: the whole 32 x 32 grid in one decoder call
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * 2**30, 140 * 2**30))
    gpu = resolve_batching(cfg, "cuda:0", n_prompts=1024)
    assert gpu["points_per_batch"] == 1024 and gpu["decoder_chunk"] == 1024 and gpu["upsample_chunk"] >= 256
    assert gpu["roi_upsample"] is False  # a per-mask loop of small kernels: batched on a GPU
    # 2 GiB free: fewer prompts per decoder step
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 16 * 2**30))
    small = resolve_batching(cfg, "cuda:0", n_prompts=1024)
    assert 16 <= small["decoder_chunk"] < 64
    # explicit values win
    assert resolve_batching(ProposalConfig(decoder_chunk=7, points_per_batch=9), "cuda:0")["decoder_chunk"] == 7
    with pytest.raises(ValueError, match="decoder_chunk"):
        ProposalConfig(decoder_chunk="many")
    assert resolve_batching(ProposalConfig(roi_upsample=False), "cpu")["roi_upsample"] is False
    with pytest.raises(ValueError, match="roi_upsample"):
        ProposalConfig(roi_upsample="yes")


def _decoder_kwargs(sam, feats, n: int, multimask: bool) -> dict:
    """MaskDecoder keyword arguments for ``n`` random single-point prompts on ``feats``."""
    pts = torch.rand(n, 1, 2) * 1000
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(pts, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)
    return dict(image_embeddings=feats, image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)


@pytest.mark.parametrize("multimask", [True, False])
def test_fast_decoder_equals_sam_mask_decoder(sam_and_features, multimask):
    from dtwinseg.perception.fast_decoder import FastMaskDecoder

    sam, _, feats = sam_and_features
    kw = _decoder_kwargs(sam, feats, 5, multimask)
    with torch.no_grad():
        ref_masks, ref_iou = sam.mask_decoder(**kw)
        masks, iou = FastMaskDecoder(sam.mask_decoder, chunk=2)(**kw)
    assert masks.shape == ref_masks.shape == (5, 3 if multimask else 1, 256, 256)
    scale = ref_masks.abs().max()
    assert torch.allclose(masks, ref_masks, atol=1e-4 * scale) and torch.allclose(iou, ref_iou, atol=1e-5)
    # decoder_precision bf16: the same under autocast (no scratch buffers, no in-place dtype mix)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_iou = FastMaskDecoder(sam.mask_decoder, chunk=2)(**kw)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), ref_masks, atol=0.05 * scale)
    assert torch.allclose(low_iou.float(), ref_iou, atol=0.05)


def test_fast_decoder_same_with_and_without_scratch_buffers(sam_and_features, monkeypatch):
    """The whole decoder on the allocating path (what a GPU runs: no scratch buffers, scores accumulated in
    place) equals the CPU path bit for bit."""
    from dtwinseg.perception import fast_decoder

    sam, _, feats = sam_and_features
    kw = _decoder_kwargs(sam, feats, 5, True)
    with torch.no_grad():
        masks, iou = fast_decoder.FastMaskDecoder(sam.mask_decoder, chunk=2)(**kw)

        class Allocating(fast_decoder._Workspace):
            def __init__(self, like, enabled=True):
                super().__init__(like, enabled=False)

        monkeypatch.setattr(fast_decoder, "_Workspace", Allocating)
        plain_masks, plain_iou = fast_decoder.FastMaskDecoder(sam.mask_decoder, chunk=2)(**kw)
    assert torch.equal(masks, plain_masks) and torch.equal(iou, plain_iou)


def test_fast_decoder_upscaling_same_with_and_without_scratch_buffers(sam_and_features):
    """The CPU path reuses scratch buffers across chunks; the allocating path (GPUs, autocast) gives the same
    numbers, and both equal the module's own transposed convolutions followed by the hypernetwork product."""
    from dtwinseg.perception.fast_decoder import _upscale_and_project, _Workspace

    sam, _, _ = sam_and_features
    up = sam.mask_decoder.output_upscaling
    g = torch.Generator().manual_seed(3)
    keys, hyper = torch.randn(3, 64 * 64, 256, generator=g), torch.randn(3, 2, 32, generator=g)
    ws, plain = _Workspace(keys), _Workspace(keys)
    plain.enabled = False
    with torch.no_grad():
        first = _upscale_and_project(up, keys, hyper, (64, 64), ws)
        again = _upscale_and_project(up, keys[:2], hyper[:2], (64, 64), ws)  # smaller chunk, same buffers
        allocating = _upscale_and_project(up, keys, hyper, (64, 64), plain)
        feats = up(keys.transpose(1, 2).reshape(3, 256, 64, 64))  # B x 32 x 256 x 256
        ref = torch.einsum("bmc,bchw->bmhw", hyper, feats)
    assert ws.buffers and not plain.buffers
    assert torch.equal(first, allocating)
    # a smaller chunk may take another GEMM blocking: equal up to float rounding, not bit for bit
    torch.testing.assert_close(again, first[:2], rtol=1e-6, atol=1e-6 * float(first.abs().max()))
    assert first.shape == (3, 2, 256, 256) and torch.allclose(first, ref, atol=1e-4 * ref.abs().max())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _Workspace(keys).enabled
        low = _upscale_and_project(up, keys, hyper, (64, 64), _Workspace(keys))
    assert torch.allclose(low.float(), ref, atol=0.05 * ref.abs().max())


def test_fast_decoder_early_rejection_only_drops_masks_below_theta(sam_and_features):
    from dtwinseg.perception.fast_decoder import FastMaskDecoder

    sam, _, feats = sam_and_features
    kw = _decoder_kwargs(sam, feats, 6, True)
    with torch.no_grad():
        fast = FastMaskDecoder(sam.mask_decoder, chunk=4)
        ref_masks, ref_iou = fast(**kw)
        theta = float(ref_iou.max(1).values.median())
        fast.skip_iou_below = theta
        masks, iou = fast(**kw)
    kept = (ref_iou > theta).any(1)
    assert 0 < kept.sum() < 6 and fast.last_skipped == int((~kept).sum())
    assert torch.equal(iou, ref_iou)
    assert torch.allclose(masks[kept], ref_masks[kept], atol=1e-5) and (masks[~kept] == -1e4).all()


def _blob_logits(n: int, seed: int) -> torch.Tensor:
    """Low-res logits of round blobs of random size, place and sharpness (so stability varies around
    SAM's 0.95), some touching the borders, plus an all-negative and an all-positive map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    maps = []
    for _ in range(n):
        cy, cx, r, sharp = rng.uniform(-10, 266), rng.uniform(-10, 266), rng.uniform(1, 140), rng.uniform(10, 300)
        m = sharp * (1 - np.hypot(yy - cy, xx - cx) / r) + rng.normal(0, 0.05, (256, 256))
        maps.append(torch.from_numpy(m.astype(np.float32)))
    maps += [torch.full((256, 256), -4.0), torch.full((256, 256), 4.0)]
    return torch.stack(maps)


@pytest.mark.parametrize("hw", [(768, 1024), (150, 200), (1500, 2000), (97, 61)])
@pytest.mark.parametrize("stability_filter", [True, False])
def test_roi_full_size_pass_equals_the_dense_one(sam_and_features, hw, stability_filter):
    """Upsampling each mask over its own region gives the dense path's stability, keep decisions, RLEs,
    boxes and centroids (x4 only: bit-identical; with the resize to the original size: the same here)."""
    sam, _, feats = sam_and_features
    out = {}
    for roi in (False, True):
        gen = ProposalGenerator(sam, ProposalConfig(points_per_side=2, roi_upsample=roi))
        with fixed_encoder(sam, feats):
            gen.set_image(np.zeros((*hw, 3), np.uint8))
        assert gen.batching["roi_upsample"] is roi
        out[roi] = gen._full_size_pass(_blob_logits(30, seed=hw[0]), stability_filter)
    (keep_d, props_d, stab_d), (keep_r, props_r, stab_r) = out[False], out[True]
    assert torch.equal(keep_d, keep_r)
    assert torch.equal(stab_d.isnan(), stab_r.isnan())
    assert torch.equal(stab_d.nan_to_num(), stab_r.nan_to_num())
    if stability_filter:
        assert 3 <= int(keep_d.sum()) <= 28, "the blobs must straddle the stability threshold"
    assert [r["counts"] for r in props_d.rles] == [r["counts"] for r in props_r.rles]
    assert np.array_equal(props_d.boxes, props_r.boxes)
    assert np.allclose(props_d.centroids, props_r.centroids, atol=1e-3)
