"""Mask proposals: dtwinseg's ProposalGenerator vs segment-anything's SamAutomaticMaskGenerator (AMG).

Same model (random-weight SAM: vit_b on CPU, vit_h on a GPU), same image (768 x 1024), same thresholds
(SAM's defaults). Realistic mask load: the decoder still runs for real, but its outputs are replaced by
planted blob logits of a synthetic nested scene (tests/planted_sam.py), so tens of masks
survive the filters as on real photos. The planted scene's own work (making / copying its outputs) is
timed by the plant hooks and subtracted from every pipeline (``planted_overhead_s`` reports it).

Measured side by side (interleaved repetitions after a warm-up, medians), refinement off unless named:
- ``stage_s``: decoder + post-processing per image; the encoder output is shared (both pipelines call
  the same SamPredictor.set_image, timed once as ``encoder_s``). ``ours`` is the default (AMG-exact)
  path, ``ours_low_res`` the approximate option, ``ours_refined_object`` / ``ours_refined_part`` the
  default with the paper's level-1 / level-2 refinement;
- ``postprocess_only_s``: the same with the decoder call skipped (what the filtering strategy changes);
- ``decoder_s``: SAM's MaskDecoder vs FastMaskDecoder on the same prompts (no early rejection);
- ``rle_s``: the final masks run-length encoded by dtwinseg.perception.rle (torch, on the device) vs
  pycocotools' encode after copying them to the host;
- ``encoder_s``: fp32, and bf16 autocast (``encoder_precision: bf16``; full runs only);
- end to end = encoder + stage.
``speedup_vs_amg`` = AMG stage time / ours (default path); ``mask_agreement`` = the smaller of the
fractions of each side's masks matched by the other with IoU >= 0.99 (default path; ``_low_res`` for the
approximate option).

Run: ``python benchmarks/proposals.py [--device cpu|cuda] [--quick] [--out PATH]`` (default result:
benchmarks/results/proposals.json on CPU, proposals_gpu.json on a GPU; the prepared GPU run is
``bash benchmarks/gpu_perception.sh``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, median, write_result  # noqa: E402

IMAGE_HW = (768, 1024)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


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


def _interleaved(fns: dict[str, Callable[[], Any]], overhead: dict, repeats: int, warmup: int = 1
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Alternate the pipelines; per run, wall time minus the planted scene's own time (and that time)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    planted: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            overhead["s"] = 0.0
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            wall = time.perf_counter() - t0
            times[k].append(wall - overhead["s"])
            planted[k].append(overhead["s"])
    return times, planted


def _encoder_times(sam: Any, image: Any, precision: str, repeats: int) -> tuple[list[float], Any]:
    """Seconds of ``repeats`` encoder runs at ``precision``, and the image features (float32)."""
    from dtwinseg.perception.proposals import ProposalConfig, ProposalGenerator

    gen = ProposalGenerator(sam, ProposalConfig(encoder_precision=precision))
    out = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        gen.set_image(image)
        _sync()
        out.append(time.perf_counter() - t0)
    return out, gen.predictor.features.clone()


def main(device: str | None = None, quick: bool = False, out: str | None = None) -> dict:
    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    from dtwinseg.perception.fast_decoder import FastMaskDecoder
    from dtwinseg.perception.proposals import ProposalConfig, ProposalGenerator
    from dtwinseg.perception.rle import encode_rles_torch
    from dtwinseg.twin import encode_rles
    from tests.planted_sam import fixed_encoder, make_scene, plant

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    model_type = "vit_h" if gpu else "vit_b"
    pps = (16 if quick else 32) if gpu else (4 if quick else 8)
    repeats = (2 if quick else 5) if gpu else (1 if quick else 3)
    torch.manual_seed(0)
    sam = sam_model_registry[model_type](checkpoint=None).to(device).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(*IMAGE_HW, 3), dtype=np.uint8)

    enc_fp32, feats = _encoder_times(sam, image, "fp32", 3 if gpu else 1)
    enc = {"fp32": enc_fp32}
    if not quick:
        enc["bf16"], feats_bf16 = _encoder_times(sam, image, "bf16", 3 if gpu else 1)
        enc_feature_rel_err = float((feats_bf16 - feats).norm() / feats.norm())
    input_hw = SamPredictor(sam).transform.get_preprocess_shape(*IMAGE_HW, sam.image_encoder.img_size)
    scene = make_scene(tuple(input_hw), n_groups=30 if pps >= 24 else 14, seed=0)

    amg = SamAutomaticMaskGenerator(sam, points_per_side=pps, points_per_batch=64, output_mode="coco_rle")
    cfg = ProposalConfig(points_per_side=pps)
    ours = ProposalGenerator(sam, cfg)
    low = ProposalGenerator(sam, ProposalConfig(points_per_side=pps, exact_filters=False))
    res: dict = {}

    def keep(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            res[name] = fn()
        return run

    pipelines = {"amg": keep("amg", lambda: amg.generate(image)), "ours": keep("ours", lambda: ours.generate(image)),
                 "ours_low_res": keep("ours_low_res", lambda: low.generate(image)),
                 "ours_refined_object": keep("object", lambda: ours.generate(image, 1)),
                 "ours_refined_part": keep("part", lambda: ours.generate(image, 2))}
    overhead: dict = {"s": 0.0}
    with fixed_encoder(sam, feats):
        with plant(sam, scene, run_decoder=True, overhead=overhead):
            stage, planted_stage = _interleaved(pipelines, overhead, repeats)
        with plant(sam, scene, run_decoder=False, overhead=overhead):
            post, _ = _interleaved({k: pipelines[k] for k in ("amg", "ours", "ours_low_res")}, overhead, repeats)
    timings_ours = dict(res["ours"].timings)

    n_prompts = 64 if gpu else (8 if quick else 24)
    pts = torch.rand(n_prompts, 1, 2, device=device) * 1000
    fast = FastMaskDecoder(sam.mask_decoder, chunk=ours.batching["decoder_chunk"])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(pts, torch.ones(n_prompts, 1, dtype=torch.int, device=device)),
                                           boxes=None, masks=None)
        kw = dict(image_embeddings=feats, image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                  dense_prompt_embeddings=dense, multimask_output=True)
        dec, _ = _interleaved({"sam": lambda: sam.mask_decoder(**kw), "fast": lambda: fast(**kw)},
                              {"s": 0.0}, repeats)

    # row-major N x H x W, as the pipeline holds its thresholded masks (decode() returns column-major ones)
    masks = torch.from_numpy(np.ascontiguousarray(res["ours"].masks())).to(device)
    rle, _ = _interleaved({"torch": lambda: encode_rles_torch(masks),
                           "pycocotools": lambda: encode_rles(masks.cpu().numpy())}, {"s": 0.0}, max(repeats, 10))

    med = {k: median(v) for k, v in stage.items()}
    post_med = {k: median(v) for k, v in post.items()}
    dec_med = {k: median(v) for k, v in dec.items()}
    rle_med = {k: median(v) for k, v in rle.items()}
    enc_med = {k: median(v) for k, v in enc.items()}
    e = enc_med["fp32"]
    agree = _agreement(res["ours"].rles, res["amg"])
    agree_low = _agreement(res["ours_low_res"].rles, res["amg"])
    machine = machine_info()
    result = {
        "device": machine.get("gpu", machine.get("cpu", device)) if gpu else f"cpu: {machine.get('cpu', '?')}",
        "settings": {"device": device, "model_type": model_type, "weights": "random (planted decoder outputs)",
                     "image_hw": list(IMAGE_HW), "points_per_side": pps, "amg_points_per_batch": 64,
                     "ours_batching": ours.batching, "exact_filters": cfg.exact_filters,
                     "thresholds": {"pred_iou": cfg.pred_iou_thresh, "stability": cfg.stability_score_thresh,
                                    "box_nms": cfg.box_nms_thresh},
                     "repeats": repeats, "warmup": 1, "quick": quick, "scene_blobs": len(scene),
                     "torch_threads": torch.get_num_threads()},
        "raw_s": {"encoder": enc, "stage": stage, "postprocess_only": post, "decoder": dec, "rle": rle},
        "planted_overhead_s": {k: median(v) for k, v in planted_stage.items()},
        "encoder_s": enc_med,
        "encoder_bf16_feature_rel_err": None if quick else enc_feature_rel_err,
        "stage_s": med,
        "postprocess_only_s": post_med,
        "decoder_s": {**dec_med, "prompts": n_prompts},
        "rle_s": {**rle_med, "masks": int(len(masks))},
        "ours_timings": timings_ours,
        "end_to_end_s": {"amg": e + med["amg"], "ours": e + med["ours"],
                         "method": "encoder (fp32) + stage, refinement off; planted overhead excluded"},
        "end_to_end_refined_s": {"ours": e + med["ours_refined_object"], "ours_part": e + med["ours_refined_part"],
                                 "method": "encoder (fp32) + stage with object-level (ours) / part-level refinement"},
        "masks": {"amg": agree["amg"], "ours": agree["ours"], "ours_low_res": agree_low["ours"],
                  "refined_object": len(res["object"]), "refined_part": len(res["part"])},
        "speedup_vs_amg": med["amg"] / med["ours"],
        "speedup_vs_amg_low_res": med["amg"] / med["ours_low_res"],
        "speedup_end_to_end": (e + med["amg"]) / (e + med["ours"]),
        "speedup_postprocess_only": post_med["amg"] / post_med["ours"],
        "speedup_decoder": dec_med["sam"] / dec_med["fast"],
        "speedup_rle_torch": rle_med["pycocotools"] / rle_med["torch"],
        "mask_agreement": agree["agreement"],
        "mask_agreement_detail": agree,
        "mask_agreement_low_res": agree_low["agreement"],
    }
    decoder_share = 1.0 - post_med["ours"] / med["ours"] if med["ours"] > 0 else None
    result["summary"] = {
        "device": result["device"],
        "speedup_vs_amg (stage, AMG-exact default)": result["speedup_vs_amg"],
        "mask_agreement (default | low-res option)": f"{agree['agreement']:.3f} | {agree_low['agreement']:.3f}",
        "speedup_vs_amg_low_res (approximate option)": result["speedup_vs_amg_low_res"],
        "stage s/image amg | ours | low-res | refined object | refined part":
            " | ".join(f"{med[k]:.3f}" for k in ("amg", "ours", "ours_low_res", "ours_refined_object",
                                                  "ours_refined_part")),
        "end-to-end s/image amg | ours | ours refined": f"{e + med['amg']:.3f} | {e + med['ours']:.3f} | "
                                                        f"{e + med['ours_refined_object']:.3f}",
        "encoder s fp32 | bf16": f"{e:.3f} | " + (f"{enc_med['bf16']:.3f}" if "bf16" in enc_med else "-"),
        "decoder share of our stage": decoder_share,
        "speedup_decoder (FastMaskDecoder)": result["speedup_decoder"],
        "speedup_rle_torch (vs pycocotools encode)": result["speedup_rle_torch"],
        "planted overhead s (excluded) amg | ours": f"{median(planted_stage['amg']):.3f} | "
                                                    f"{median(planted_stage['ours']):.3f}",
        "masks amg | ours | low-res": f"{agree['amg']} | {agree['ours']} | {agree_low['ours']}",
    }
    if out:
        from dtwinseg.io import atomic_write_json

        atomic_write_json(out, {"name": Path(out).stem, "machine": machine,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result})
    else:
        write_result("proposals_gpu" if gpu else "proposals", result)
    return result


if __name__ == "__main__":
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--quick", action="store_true", help="small grid, one repetition (smoke test)")
    ap.add_argument("--out", default=None, help="result JSON path (default benchmarks/results/proposals[_gpu].json)")
    args = ap.parse_args()
    res = main(device=args.device, quick=args.quick, out=args.out)
    print(json.dumps(res["summary"], indent=2))
