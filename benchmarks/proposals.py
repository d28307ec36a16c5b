"""Mask proposals: dtwinseg's ProposalGenerator vs segment-anything's SamAutomaticMaskGenerator.

Same model (random-weight SAM: vit_b on CPU, vit_h on a GPU), same image (768 x 1024), same thresholds
(SAM's defaults), refinement off. Realistic mask load: the decoder still runs for real, but its outputs
are replaced by planted blob logits of a synthetic nested scene (dtwinseg/testing/planted_sam.py), so tens
of masks survive the filters as on real photos.

Measured side by side (interleaved repetitions after a warm-up, medians):
- ``stage``: decoder + post-processing per image (the encoder output is shared: both pipelines call the
  same SamPredictor.set_image, timed once as ``encoder_s``);
- ``postprocess_only``: the same with the decoder call skipped (what the filtering strategy changes);
- ``decoder``: SAM's MaskDecoder vs FastMaskDecoder on the same prompts (no early rejection);
- end to end = encoder + stage (the encoder code is identical in both pipelines).
``speedup_vs_amg`` = AMG stage time / ours; ``mask_agreement`` = the smaller of the fractions of each side's
masks matched by the other with IoU >= 0.99 (default low-res filters; ``mask_agreement_exact_filters`` for
``exact_filters: true``).

Run: ``python benchmarks/proposals.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved, median, write_result  # noqa: E402

IMAGE_HW = (768, 1024)


def _agreement(ours_rles: list[dict], amg_anns: list[dict]) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    from dtwinseg.perception.mask_ops import coco_rles

    theirs = [a["segmentation"] for a in amg_anns]
    if not ours_rles or not theirs:
        same = len(ours_rles) == len(theirs)
        return {"ours": len(ours_rles), "amg": len(theirs), "agreement": 1.0 if same else 0.0}
    iou = np.asarray(mask_utils.iou(coco_rles(ours_rles), theirs, [0] * len(theirs)))
    ours_matched = float((iou.max(1) >= 0.99).mean())
    amg_matched = float((iou.max(0) >= 0.99).mean())
    return {"ours": len(ours_rles), "amg": len(theirs), "ours_matched": ours_matched, "amg_matched": amg_matched,
            "agreement": min(ours_matched, amg_matched)}


def main(quick: bool = False) -> dict:
    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    from dtwinseg.perception.fast_decoder import FastMaskDecoder
    from dtwinseg.perception.proposals import ProposalConfig, ProposalGenerator
    from dtwinseg.testing.planted_sam import fixed_encoder, make_scene, plant, planted_ious

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    model_type = "vit_h" if gpu else "vit_b"
    pps = 32 if gpu else (6 if quick else 8)
    repeats = 3 if quick else 5 if gpu else 3
    torch.manual_seed(0)
    sam = sam_model_registry[model_type](checkpoint=None).to(device).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*IMAGE_HW, 3), dtype=np.uint8)

    predictor = SamPredictor(sam)
    enc_times = []
    for _ in range(1 if not gpu else 3):
        t0 = time.perf_counter()
        with torch.no_grad():
            predictor.set_image(image)
        if gpu:
            torch.cuda.synchronize()
        enc_times.append(time.perf_counter() - t0)
    feats = predictor.features.clone()
    scene = make_scene(tuple(predictor.input_size), n_groups=30 if pps >= 24 else 14, seed=0)

    amg = SamAutomaticMaskGenerator(sam, points_per_side=pps, points_per_batch=64, output_mode="coco_rle")
    cfg = ProposalConfig(points_per_side=pps, refine=False)
    ours = ProposalGenerator(sam, cfg)
    ours_exact = ProposalGenerator(sam, ProposalConfig(points_per_side=pps, refine=False, exact_filters=True))
    out: dict = {}

    def run_amg() -> None:
        out["amg"] = amg.generate(image)

    def run_ours() -> None:
        out["ours"] = ours.generate(image)

    with fixed_encoder(sam, feats):
        with plant(sam, scene, run_decoder=True):
            stage = interleaved({"amg": run_amg, "ours": run_ours}, repeats=repeats, warmup=1)
            out["exact"] = ours_exact.generate(image)
            gate = planted_ious(scene, torch.as_tensor(ours.predictor.transform.apply_coords(
                ours.grid_points(), ours.predictor.original_size)))
            skip_fraction = float((gate <= cfg.pred_iou_thresh).all(1).float().mean())
        with plant(sam, scene, run_decoder=False):
            post = interleaved({"amg": run_amg, "ours": run_ours}, repeats=repeats, warmup=1)

    n_prompts = 24 if not quick else 12
    pts = torch.rand(n_prompts, 1, 2, device=device) * 1000
    fast = FastMaskDecoder(sam.mask_decoder, chunk=cfg.decoder_chunk if not gpu else 64)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(pts, torch.ones(n_prompts, 1, dtype=torch.int, device=device)),
                                           boxes=None, masks=None)
        kw = dict(image_embeddings=feats, image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                  dense_prompt_embeddings=dense, multimask_output=True)
        dec = interleaved({"sam": lambda: sam.mask_decoder(**kw), "fast": lambda: fast(**kw)},
                          repeats=repeats, warmup=1)

    enc = median(enc_times)
    stage_med = {k: median(v) for k, v in stage.items()}
    post_med = {k: median(v) for k, v in post.items()}
    dec_med = {k: median(v) for k, v in dec.items()}
    agree = _agreement(out["ours"].rles, out["amg"])
    agree_exact = _agreement(out["exact"].rles, out["amg"])
    result = {
        "settings": {"device": device, "model_type": model_type, "weights": "random (planted decoder outputs)",
                     "image_hw": list(IMAGE_HW), "points_per_side": pps, "amg_points_per_batch": 64,
                     "ours_points_per_batch": cfg.points_per_batch, "decoder_chunk": cfg.decoder_chunk,
                     "thresholds": {"pred_iou": cfg.pred_iou_thresh, "stability": cfg.stability_score_thresh,
                                    "box_nms": cfg.box_nms_thresh},
                     "repeats": repeats, "warmup": 1, "quick": quick, "scene_blobs": len(scene)},
        "raw_s": {"encoder": enc_times, "stage": stage, "postprocess_only": post, "decoder": dec},
        "encoder_s": enc,
        "stage_s": stage_med,
        "postprocess_only_s": post_med,
        "decoder_s": {**dec_med, "prompts": n_prompts},
        "end_to_end_s": {"amg": enc + stage_med["amg"], "ours": enc + stage_med["ours"],
                         "method": "encoder + stage (identical encoder code in both)"},
        "prompts_skipped_fraction": skip_fraction,
        "masks": {"amg": agree["amg"], "ours": agree["ours"], "ours_exact_filters": agree_exact["ours"]},
        "speedup_vs_amg": stage_med["amg"] / stage_med["ours"],
        "speedup_end_to_end": (enc + stage_med["amg"]) / (enc + stage_med["ours"]),
        "speedup_postprocess_only": post_med["amg"] / post_med["ours"],
        "speedup_decoder": dec_med["sam"] / dec_med["fast"],
        "mask_agreement": agree["agreement"],
        "mask_agreement_exact_filters": agree_exact["agreement"],
    }
    result["summary"] = {
        "speedup_vs_amg (decoder + post-processing)": result["speedup_vs_amg"],
        "speedup_end_to_end": result["speedup_end_to_end"],
        "speedup_postprocess_only": result["speedup_postprocess_only"],
        "speedup_decoder (FastMaskDecoder)": result["speedup_decoder"],
        "stage s/image amg | ours": f"{stage_med['amg']:.2f} | {stage_med['ours']:.2f}",
        "end-to-end s/image amg | ours": f"{enc + stage_med['amg']:.2f} | {enc + stage_med['ours']:.2f}",
        "masks amg | ours": f"{agree['amg']} | {agree['ours']}",
        "prompts skipped by early rejection": f"{skip_fraction:.2f}",
        "mask_agreement (low-res filters | exact filters)": f"{agree['agreement']:.3f} | {agree_exact['agreement']:.3f}",
    }
    write_result("proposals", result)
    return result


if __name__ == "__main__":
    import json

    res = main(quick="--quick" in sys.argv)
    print(json.dumps(res["summary"], indent=2))
