"""build-dt: ReasonSeg-format fixtures -> DT cache (oracle and planted-SAM sources, VLM on loopback),
resume after an interrupted run, sharding, failures recorded, two-pass semantics."""

import json

import numpy as np
import pytest
import torch
from dtwinseg.data_builders.build_dt import build_dt, dataset_tag, parse_shard, shard_indices
from dtwinseg.data_builders.dt_cache import DTCache
from PIL import Image
from typer.testing import CliRunner

from dtwinseg.io import DataError
from dtwinseg.perception.builder import PerceptionConfig, TwinBuilder, mask_views
from dtwinseg.twin import encode_rle
from tests.perception_helpers import ChatServer

H, W = 48, 64
KEY = "sk-build-dt-SECRET-42"


def rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def write_reasonseg(root, n, bad=(), split="val", prefix="s"):
    """n samples in ReasonSeg format (split 'val') with instance sidecars; indices in ``bad`` get a
    truncated JPEG (header readable, pixels not)."""
    split = root / split
    split.mkdir(parents=True)
    for k in range(n):
        img = np.full((H, W, 3), 40, np.uint8)
        cup, handle, box = rect(5 + k % 3, 5, 25, 30), rect(20, 10, 25, 20), rect(35, 8, 60, 40)
        img[cup] = (200, 30, 30)
        img[box] = (30, 30, 200)
        path = split / f"{prefix}{k:02d}.jpg"
        Image.fromarray(img).save(path, quality=95)
        if k in bad:
            path.write_bytes(path.read_bytes()[:-60])
        anno = {"text": [f"the cup number {k}"], "is_sentence": False, "granularity": k % 3,
                "shapes": [{"label": "target", "shape_type": "polygon",
                            "points": [[5, 5], [25, 5], [25, 30], [5, 30]]}]}
        (split / f"{prefix}{k:02d}.json").write_text(json.dumps(anno))
        objects = [{"rle": encode_rle(cup), "semantic": "red cup", "level": 1, "parent": None},
                   {"rle": encode_rle(handle), "semantic": "handle of the red cup", "level": 2, "parent": 0},
                   {"rle": encode_rle(box), "semantic": "blue box", "level": 1, "parent": None}]
        (split / f"{prefix}{k:02d}.instances.json").write_text(json.dumps({"objects": objects}))
    return root


ORACLE_YAML = "source: oracle\nvlm: {backend: none}\n"


def oracle_config(tmp_path):
    p = tmp_path / "oracle.yaml"
    p.write_text(ORACLE_YAML)
    return p


def twin_dicts(cache):
    out = {}
    for t in cache.iter_twins():
        d = t.to_dict()
        d["provenance"].pop("timings")
        out[t.image_id] = d
    return out


def test_cli_oracle_build_with_a_bad_image(tmp_path):
    from dtwinseg.cli.main import app

    root = write_reasonseg(tmp_path / "ReasonSeg", 5, bad={3})
    res = CliRunner().invoke(app, ["build-dt", f"reasonseg:{root}:val", "--config", str(oracle_config(tmp_path)),
                                   "--out", str(tmp_path / "cache"), "--no-progress"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout[res.stdout.index("{"):])
    assert (counts["built"], counts["failed"], counts["samples"]) == (4, 1, 5)
    cache = DTCache.open(tmp_path / "cache")
    assert [f["id"] for f in cache.failures()] == ["s03"] and "OSError" in cache.failures()[0]["error"]
    assert json.loads((cache.folder / "manifest.json").read_text())["counts"]["failed"] == 1
    for k in (0, 1, 2, 4):
        twin = cache.get(f"s{k:02d}")
        assert twin.granularity == k % 3 and twin.query == f"the cup number {k}"
        sems = [o.semantic for o in twin.objects]
        # part level gets every instance, object / group level only whole objects
        assert sems == (["red cup", "handle of the red cup", "blue box"] if k % 3 == 2 else ["red cup", "blue box"])
        assert twin.provenance["source"] == "oracle" and twin.provenance["granularity_source"] == "sample"
        assert twin.objects[0].mask().sum() == rect(5 + k % 3, 5, 25, 30).sum()


def test_resume_after_interrupted_run_matches_one_shot(tmp_path):
    root = write_reasonseg(tmp_path / "ReasonSeg", 6)
    spec, cfg = f"reasonseg:{root}:val", PerceptionConfig.from_yaml(oracle_config(tmp_path))
    _, fresh_counts = build_dt(spec, cfg, tmp_path / "fresh", progress=False)
    fresh = twin_dicts(DTCache.open(tmp_path / "fresh"))

    class Killed(TwinBuilder):
        calls = 0

        def build(self, *a, **kw):
            Killed.calls += 1
            if Killed.calls == 4:
                raise KeyboardInterrupt  # the process dies here
            return super().build(*a, **kw)

    with pytest.raises(KeyboardInterrupt):
        build_dt(spec, cfg, tmp_path / "c", builder=Killed(cfg), progress=False)
    cache = DTCache.open(tmp_path / "c")
    assert len(cache) == 3
    # a kill during a write leaves only a temporary file, never a twin
    (cache.twins_dir / ".s04.json.123.tmp").write_text('{"half": ')
    assert not cache.has("s04") and len(cache) == 3
    _, counts = build_dt(spec, cfg, tmp_path / "c", progress=False)
    assert (counts.existing, counts.built, counts.failed) == (3, 3, 0)
    assert twin_dicts(cache) == fresh and fresh_counts.built == 6


def test_images_are_decoded_ahead_in_threads_and_cached_ones_not_at_all(tmp_path, monkeypatch):
    import threading

    import dtwinseg.data_builders.build_dt as bd

    decoded: list[tuple[str, str]] = []
    real = bd.decode_rgb

    def spy(path):
        decoded.append((str(path), threading.current_thread().name))
        return real(path)

    monkeypatch.setattr(bd, "decode_rgb", spy)
    root = write_reasonseg(tmp_path / "ReasonSeg", 5)
    spec, cfg = f"reasonseg:{root}:val", PerceptionConfig.from_yaml(oracle_config(tmp_path))
    _, counts = build_dt(spec, cfg, tmp_path / "c", progress=False, prefetch_depth=3)
    assert counts.built == 5 and len(decoded) == 5
    assert all(name.startswith("prefetch") for _, name in decoded)  # not on the main thread
    decoded.clear()
    _, again = build_dt(spec, cfg, tmp_path / "c", progress=False)
    assert again.existing == 5 and decoded == []  # a cached twin costs no image decode


def test_shards_cover_every_sample_exactly_once(tmp_path):
    root = write_reasonseg(tmp_path / "ReasonSeg", 7)
    spec, cfg = f"reasonseg:{root}:val", PerceptionConfig.from_yaml(oracle_config(tmp_path))
    built = []
    for i in range(3):
        cache, counts = build_dt(spec, cfg, tmp_path / "c", shard=(i, 3), progress=False)
        built.append(counts.built)
        assert (cache.folder / f"manifest.{dataset_tag(spec)}.shard-{i}-of-3.json").exists()
    assert built == [3, 2, 2]
    assert sorted(t.image_id for t in cache.iter_twins()) == [f"s{k:02d}" for k in range(7)]
    assert shard_indices(10, (1, 4), limit=7) == [1, 5]
    for n in range(1, 6):
        parts = [shard_indices(11, (i, n)) for i in range(n)]
        assert sorted(sum(parts, [])) == list(range(11))
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_cli_reports_config_errors(tmp_path):
    from dtwinseg.cli.main import app

    root = write_reasonseg(tmp_path / "ReasonSeg", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: oracle\nthreshold: 3\n")
    res = CliRunner().invoke(app, ["build-dt", f"reasonseg:{root}:val", "-c", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "threshold" in res.output and "bad.yaml" in res.output
    # out-of-range values are refused at load, naming the field, even where this source ignores them
    for text, match in (("proposals: {pred_iou_thresh: 2}", "pred_iou_thresh must be in [0, 1]"),
                        ("proposals: {stability_score_thresh: .nan}", "stability_score_thresh must be in [0, 1]"),
                        ("vlm: {backend: none, temperature: -1}", "field 'vlm.temperature': must be >= 0"),
                        ("vlm: {backend: none, batch_size: 0}", "field 'vlm.batch_size': must be >= 1")):
        bad.write_text(f"source: oracle\n{text}\n")
        res = CliRunner().invoke(app, ["build-dt", f"reasonseg:{root}:val", "-c", str(bad), "-o", str(tmp_path / "o")])
        assert res.exit_code == 2 and "bad.yaml" in res.output and match in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(app, ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)),
                                   "-o", str(tmp_path / "o"), "--fill-semantics"])
    assert res.exit_code == 2 and "needs a VLM" in res.output


def test_mask_views_crop_and_outline():
    img = Image.fromarray(np.full((H, W, 3), 100, np.uint8))
    crop, whole = mask_views(img, rect(10, 10, 20, 30), padding=0.1)
    assert crop.size == (12, 24)            # box 10 x 20 plus 10% each side
    arr = np.asarray(whole)
    assert (arr[10, 15] == (255, 0, 0)).all() and (arr[20, 15] == 100).all()
    assert np.asarray(crop)[0, 0].max() < 100  # outside the mask is dimmed


# --- SAM source (planted random vit_b) with an OpenAI-compatible VLM ---------------------------------

@pytest.fixture(scope="module")
def planted_sam():
    from segment_anything import sam_model_registry

    from tests.planted_sam import BlobScene

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None).eval()
    # input frame 1024 x 768 for 64 x 48 images: the cup (with a handle part) and the box
    scene = BlobScene(centers=np.array([[240.0, 280.0], [320.0, 240.0], [760.0, 380.0]]),
                      radii=np.array([[160.0, 200.0], [50.0, 60.0], [200.0, 240.0]]),
                      slopes=np.array([20.0, 20.0, 20.0]), ious=np.array([0.95, 0.93, 0.97]))
    return sam, scene


def sam_config(tmp_path, server, backend="openai"):
    p = tmp_path / "sam.yaml"
    p.write_text(f"""source: sam
sam_model_type: vit_b
sam_checkpoint: random
device: cpu
proposals: {{points_per_side: 8, points_per_batch: 32}}
vlm: {{backend: {backend}, model: gpt-4o, base_url: "{server.base_url}", api_key_env: BUILD_DT_KEY,
      backoff_s: 0.01, backoff_max_s: 0.02, max_retries: 1}}
semantic_strategy: system
""")
    return PerceptionConfig.from_yaml(p)


def answer(body):
    text = body["messages"][-1]["content"][0]["text"]
    return "2" if "granularity" in text or "single digit" in text else "Observation: red.\nDescription: red cup"


def run_planted(planted_sam, fn):
    from dtwinseg.perception.proposals import ProposalGenerator
    from tests.planted_sam import fixed_encoder, plant

    sam, scene = planted_sam
    with fixed_encoder(sam, torch.zeros(1, 256, 64, 64)), plant(sam, scene, run_decoder=False):
        return fn(lambda cfg: TwinBuilder(cfg, generator=ProposalGenerator(sam, cfg.proposals)))


def test_sam_source_with_openai_vlm_end_to_end(tmp_path, planted_sam, monkeypatch):
    monkeypatch.setenv("BUILD_DT_KEY", KEY)
    root = write_reasonseg(tmp_path / "ReasonSeg", 3)
    with ChatServer(answer_fn=answer) as srv:
        cfg = sam_config(tmp_path, srv)
        cache, counts = run_planted(planted_sam, lambda mk: build_dt(
            f"reasonseg:{root}:val", cfg, tmp_path / "c", builder=mk(cfg), progress=False))
    assert (counts.built, counts.failed, counts.granularity_fallbacks) == (3, 0, 0)
    twin = cache.get("s00")
    assert twin.granularity == 2 and twin.provenance["granularity_source"] == "vlm"
    assert len(twin) == 3 and {o.semantic for o in twin.objects} == {"red cup"}   # part level keeps the handle
    assert all(0.9 < o.predicted_iou <= 1 and o.level == 2 for o in twin.objects)
    assert twin.provenance["vlm"] == {"backend": "openai", "model": "gpt-4o"}
    assert srv.auth and all(a == f"Bearer {KEY}" for a in srv.auth)
    for f in cache.folder.rglob("*.json*"):
        assert KEY not in f.read_text()


def test_vlm_failure_is_recorded_and_two_pass_semantics(tmp_path, planted_sam, monkeypatch):
    monkeypatch.setenv("BUILD_DT_KEY", KEY)
    root = write_reasonseg(tmp_path / "ReasonSeg", 2)
    spec = f"reasonseg:{root}:val"
    with ChatServer(default=(503, "overloaded")) as srv:
        cfg = sam_config(tmp_path, srv)
        cache, counts = run_planted(planted_sam, lambda mk: build_dt(spec, cfg, tmp_path / "c", builder=mk(cfg),
                                                                     progress=False))
    assert counts.failed == 2 and all("HTTP 503" in f["error"] for f in cache.failures())
    assert all(KEY not in f["error"] for f in cache.failures())
    # pass 1: proposals only; pass 2: semantics from the VLM into the full config's folder
    with ChatServer(answer_fn=answer) as srv:
        cfg = sam_config(tmp_path, srv)
        cfg.vlm.backend = "none"
        first, c1 = run_planted(planted_sam, lambda mk: build_dt(spec, cfg, tmp_path / "c", builder=mk(cfg),
                                                                 progress=False))
        assert c1.built == 2 and all(o.semantic == "" for t in first.iter_twins() for o in t.objects)
        assert first.get("s01").granularity == 1   # the sample's tag, no VLM
        cfg.vlm.backend = "openai"
        second, c2 = build_dt(spec, cfg, tmp_path / "c", fill_semantics=True, progress=False)
    assert c2.built == 2 and second.folder != first.folder and second.config["semantics_pass"] == "second"
    for sid in ("s00", "s01"):
        a, b = first.get(sid), second.get(sid)
        assert [o.rle for o in a.objects] == [o.rle for o in b.objects]
        assert {o.semantic for o in b.objects} == {"red cup"} and b.provenance["semantic_source"] == "vlm"


def test_cache_key_ignores_operational_fields_but_not_thresholds():
    a = PerceptionConfig.from_dict({"source": "sam", "device": "cuda:0",
                                    "proposals": {"points_per_batch": 64, "roi_upsample": False},
                                    "vlm": {"backend": "openai", "model": "gpt-4o", "max_concurrency": 2}})
    b = PerceptionConfig.from_dict({"source": "sam", "device": "cpu", "proposals": {"points_per_batch": 512},
                                    "vlm": {"backend": "openai", "model": "gpt-4o", "max_concurrency": 64}})
    c = PerceptionConfig.from_dict({"source": "sam", "proposals": {"pred_iou_thresh": 0.8},
                                    "vlm": {"backend": "openai", "model": "gpt-4o"}})
    assert a.hash() == b.hash() != c.hash()
    assert "device" not in a.identity() and a.identity()["proposals"]["pred_iou_thresh"] == 0.88


def test_readers_without_random_access_are_sharded_by_one_pass(tmp_path, monkeypatch):
    from dtwinseg.data_builders import build_dt as bd
    from dtwinseg.data_builders.registry import open_dataset

    root = write_reasonseg(tmp_path / "ReasonSeg", 5)

    class IterOnly:
        def __init__(self, ds):
            self.ds, self.skipped = ds, ds.skipped

        def __iter__(self):
            return iter(self.ds)

        def __len__(self):
            return len(self.ds)

    monkeypatch.setattr(bd, "open_dataset", lambda spec, strict: IterOnly(open_dataset(spec, strict=strict)))
    cfg = PerceptionConfig.from_yaml(oracle_config(tmp_path))
    cache, counts = bd.build_dt(f"reasonseg:{root}:val", cfg, tmp_path / "c", shard=(1, 2), progress=False)
    assert counts.built == 2 and sorted(t.image_id for t in cache.iter_twins()) == ["s01", "s03"]


def test_datasets_sharing_a_cache_build_their_shards_at_the_same_time(tmp_path, monkeypatch):
    """Every dataset built with one config shares the cache folder; a shard's lock is the dataset's own (the
    demo builds train, val and test shards in parallel workers), while a second writer of the same
    dataset's shard, under any spelling of its root, is still refused."""
    from dtwinseg.runtime import RunLock

    val_root = write_reasonseg(tmp_path / "ReasonSeg", 4)
    cfg = PerceptionConfig.from_yaml(oracle_config(tmp_path))
    val, test = f"reasonseg:{val_root}:val", f"reasonseg:{val_root}:test"
    write_reasonseg(tmp_path / "ReasonSeg", 3, split="test", prefix="t")
    cache, _ = build_dt(val, cfg, tmp_path / "c", shard=(1, 2), progress=False)  # creates the folder
    with RunLock(cache.folder / f".lock.{dataset_tag(val)}.shard-0-of-2"):  # val's shard 0 is being written
        _, counts = build_dt(test, cfg, tmp_path / "c", shard=(0, 2), progress=False)
        assert counts.built == 2  # test's shard 0 is not blocked by it
        monkeypatch.chdir(tmp_path)
        for spelling in (val, "reasonseg:ReasonSeg:val", f"REASONSEG:{val_root}/.:val"):
            with pytest.raises(DataError, match="is being written by"):
                build_dt(spelling, cfg, tmp_path / "c", shard=(0, 2), progress=False)
    assert dataset_tag(val) != dataset_tag(test)
    assert {p.name for p in cache.folder.glob("manifest.*.json")} == {
        f"manifest.{dataset_tag(val)}.shard-1-of-2.json", f"manifest.{dataset_tag(test)}.shard-0-of-2.json"}
