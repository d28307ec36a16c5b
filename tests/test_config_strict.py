"""Every user-facing config goes through dtwinseg.config's strict helper: did-you-mean, typed values,
secret-named keys refused, errors naming the file and the dotted field."""

from __future__ import annotations

import pytest
from dtwinseg.data_builders.teacher import TeacherConfig
from dtwinseg.workflows.table4 import load_manifest

from dtwinseg.config import ConfigError
from dtwinseg.formats import FormatConfig, build_format
from dtwinseg.formats.compact import CompactOptions
from dtwinseg.io import DataError
from dtwinseg.reasoning.config import ReasoningConfig


@pytest.mark.parametrize(("data", "match"), [
    ({"formt": {}}, r"r\.yaml: field 'formt': unknown key; did you mean 'format'"),
    ({"format": {"spatial": {"max_relation": 3}}},
     r"field 'format\.spatial\.max_relation': unknown key; did you mean 'format\.spatial\.max_relations'"),
    ({"api_key": "sk-secret"}, r"field 'api_key': never put a key in a config"),
    ({"batch_size": "many"}, r"field 'batch_size': expected an integer"),
    ({"format": {"tokens_per_object": 0}}, r"r\.yaml: field 'format\.tokens_per_object': must be >= 1"),
    ({"strategy": "nope"}, r"r\.yaml: field 'strategy': 'nope' is not a reasoning format"),
    ({"temperature": -2}, r"r\.yaml: field 'temperature': must be >= 0"),
    ({"top_p": 0}, r"r\.yaml: field 'top_p': must be in \(0, 1\]"),
])
def test_reasoning_config_is_strict_and_names_file_and_field(data, match):
    with pytest.raises(DataError, match=match):
        ReasoningConfig.from_dict(data, path="r.yaml")


def test_reasoning_config_values_are_typed_and_legacy_keys_still_read():
    cfg = ReasoningConfig.from_dict({"batch_size": "4", "temperature": 1, "max_new_tokens": 64,
                                     "spatial": {"max_relations": "all"}, "score_margin": 0.5,
                                     "strategy": "score"}, path="r.yaml")
    assert cfg.batch_size == 4 and cfg.temperature == 1.0 and isinstance(cfg.temperature, float)
    assert cfg.max_new_tokens == 64 and cfg.format.spatial.all_pairs
    assert cfg.format.options == {"margin": 0.5}
    assert ReasoningConfig.from_dict({"format": {"spatial": {"max_relations": 6}}}).spatial.max_relations == 6


def test_format_options_have_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"format\.options\.marign': unknown key; did you mean 'format\.options\.margin'"):
        build_format("score", {"options": {"marign": 1}})
    with pytest.raises(ConfigError, match=r"format\.options\.targt': unknown key; did you mean 'format\.options\.target'"):
        CompactOptions.from_dict({"targt": "path"})
    assert CompactOptions.from_dict({"echo": "false"}).echo is False
    with pytest.raises(DataError, match=r"format\.options\.position"):
        CompactOptions.from_dict({"position": "left"})
    with pytest.raises(ConfigError, match=r"config\.indent': expected an integer"):
        FormatConfig.from_dict({"indent": "wide"}, where="config")


def test_teacher_spatial_is_a_strict_spatial_config():
    assert TeacherConfig.from_dict({"spatial": {"max_relations": "all"}}).spatial_config().all_pairs
    with pytest.raises(ConfigError, match=r"t\.yaml: field 'spatial\.max_relation': unknown key"):
        TeacherConfig.from_dict({"spatial": {"max_relation": 2}}, path="t.yaml")


def test_table4_manifest_rows_are_strict(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("reasoning: r.yaml\nfull_perception: p.yaml\nrows:\n"
                 "  - {id: 1, component: c, configuration: x, paper: [1, 2.5]}\n")
    row = load_manifest(p).rows[0]
    assert row.id == "1" and row.paper == [1.0, 2.5]
    p.write_text("reasoning: r.yaml\nfull_perception: p.yaml\nrows:\n"
                 "  - {id: a, component: c, configuration: x, reasonig: r.yaml}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: field 'rows\[0\]\.reasonig': unknown key; did you mean 'rows\[0\]\.reasoning'"):
        load_manifest(p)


def test_endpoint_fields_are_declared_once_with_each_configs_defaults():
    from dtwinseg.openai_chat import EndpointFields
    from dtwinseg.perception.vlm import VLMConfig

    configs = (ReasoningConfig(), VLMConfig(), TeacherConfig())
    assert all(isinstance(c, EndpointFields) for c in configs)
    assert [(c.timeout_s, c.max_retries) for c in configs] == [(120.0, 5), (60.0, 5), (180.0, 3)]
    teacher = TeacherConfig.from_dict({"base_url": "http://h/v1", "model": "m", "timeout_s": "30"}).client().config
    assert (teacher.base_url, teacher.model, teacher.timeout_s, teacher.api_key_envs[-1]) == \
        ("http://h/v1", "m", 30.0, "OPENAI_API_KEY")
    for cls, section in ((ReasoningConfig, ""), (TeacherConfig, ""), (VLMConfig, "vlm.")):
        with pytest.raises(DataError, match=rf"c\.yaml: field '{section}timeout_s': must be > 0"):
            cls.from_dict({"timeout_s": 0}, path="c.yaml")


def test_every_config_file_is_read_with_yaml_1_2_scalars(tmp_path):
    """One YAML reader (dtwinseg.io.load_yaml) for recipes and the perception / reasoning / teacher configs."""
    from dtwinseg.config import load_config_yaml
    from dtwinseg.io import load_yaml

    p = tmp_path / "r.yaml"
    p.write_text("model: no\ntemperature: 1e-1\ndo_sample: true\n")
    assert load_yaml(p) == load_config_yaml(p) == {"model": "no", "temperature": 0.1, "do_sample": True}
    cfg = ReasoningConfig.from_yaml(p)
    assert (cfg.model, cfg.temperature, cfg.do_sample) == ("no", 0.1, True)
    with pytest.raises(DataError, match=r"missing\.yaml: file not found"):
        ReasoningConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_config_yaml(tmp_path / "missing.yaml")
    # faulty files are one line naming the file, whichever command reads them
    (tmp_path / "bin.yaml").write_bytes(b"model: \xff\xfe\n")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    for name, match in (("bin", "not UTF-8 text"), ("dir", "is a folder"), ("list", "expected a mapping"),
                        ("bad", "invalid YAML")):
        with pytest.raises(DataError, match=rf"{name}\.yaml: {match}"):
            load_yaml(tmp_path / f"{name}.yaml")
        with pytest.raises(DataError, match=rf"{name}\.yaml: {match}"):
            ReasoningConfig.from_yaml(tmp_path / f"{name}.yaml")


def test_configs_share_one_strict_from_dict_from_yaml_to_dict(tmp_path):
    from dtwinseg.data_builders.programmatic import ProgrammaticConfig
    from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig

    from dtwinseg.config import StrictConfig
    from dtwinseg.perception.builder import PerceptionConfig
    from dtwinseg.perception.vlm import VLMConfig
    from dtwinseg.spatial import SpatialConfig

    for cls in (PerceptionConfig, VLMConfig, TeacherConfig, ReasoningConfig, FormatConfig, SpatialConfig,
                CompactOptions, SFTDatasetConfig, ProgrammaticConfig):
        assert issubclass(cls, StrictConfig), cls
        assert cls.from_dict(cls().to_dict()) == cls()  # to_dict reads back to the same config
    p = tmp_path / "sft.yaml"
    p.write_text("max_length: '512'\nw_answer: 8\nformat: {spatial: {max_relations: 2}}\n")
    cfg = SFTDatasetConfig.from_yaml(p)
    assert cfg.max_length == 512 and cfg.loss_weights.answer == 8.0 and cfg.format.spatial.max_relations == 2
    with pytest.raises(ConfigError, match=r"field 'min_iuo': unknown key; did you mean 'min_iou'"):
        ProgrammaticConfig.from_dict({"min_iuo": 0.3})
    with pytest.raises(ConfigError, match=r"field 'vlm\.modle': unknown key"):
        VLMConfig.from_dict({"modle": "m"})
