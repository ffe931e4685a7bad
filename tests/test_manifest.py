"""The fingerprint rule keeps a user's finished work: across upgrades, across added config fields, and when inputs
really change (the old outputs are moved aside, not deleted); outputs damaged after their stage finished are noticed
by content and recomputed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import distill.manifest as manifest_module
from distill.config import Config, TrainingConfig, config_from_dict
from distill.errors import StageError, TeacherError
from distill.files import read_json, write_json
from distill.fingerprints import RULE, legacy_fingerprints, stage_fingerprints
from distill.layout import RunLayout
from distill.manifest import StageResult, changed_output, open_run, output_files, require, run_stage

FIXTURE = Path(__file__).parent / "fixtures" / "run_c139548"


def outputs(layout: RunLayout, key: str) -> list[Path]:
    """A stand-in output file for stage ``key`` (the manifest decision only checks that outputs exist)."""
    return [layout.root / "outputs" / key.replace(":", "-")]


def fail_if_called() -> StageResult:
    raise AssertionError("a finished stage was recomputed")


def test_a_run_directory_from_c139548_is_reused_with_every_stage_skipped(tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    config = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
    run = open_run(config, run_dir)
    keys = list(read_json(run_dir / "manifest.json")["stages"])
    assert len(keys) == 10 and run.manifest["fingerprint_rule"] == RULE
    assert "fingerprints of 10 finished stage(s) carried over" in capsys.readouterr().out
    for key in keys:
        for path in outputs(run.layout, key):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("done")
        assert run_stage(run, key, outputs(run.layout, key), fail_if_called, "would work") is False
    assert capsys.readouterr().out.count("complete, inputs unchanged: skipped") == 10
    assert all(run.manifest["stages"][key]["migrated_from_rule"] == 1 for key in keys)


def test_the_legacy_rule_reproduces_the_c139548_fingerprints():
    manifest = read_json(FIXTURE / "manifest.json")
    legacy = legacy_fingerprints(yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8")))
    assert legacy == {key: entry["fingerprint"] for key, entry in manifest["stages"].items()}


def test_a_stage_whose_config_changed_since_c139548_is_not_carried_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    raw["bench"]["iterations"] = 7  # the user's new config: bench (and report, downstream) must recompute
    run = open_run(config_from_dict(raw), run_dir)
    decisions = {}
    for key in run.manifest["stages"]:
        for path in outputs(run.layout, key):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("done")
        decisions[key] = run_stage(run, key, outputs(run.layout, key), lambda: StageResult({}, "redone"), "redoing")
    assert {key for key, ran in decisions.items() if ran} == {"bench", "report"}


class ExtendedTraining(TrainingConfig):
    """A later release's training section: one new field with a default."""

    gradient_clipping: float = 1.0


class ExtendedConfig(Config):
    """A later release's schema: a new top-level field and a new nested field, both with defaults."""

    notes: str = ""
    teacher_training_extra: ExtendedTraining = ExtendedTraining()


def test_a_field_added_with_its_default_changes_no_fingerprint(tmp_path):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    today = stage_fingerprints(config_from_dict(raw))
    later = stage_fingerprints(ExtendedConfig.model_validate(raw))
    assert later == today
    changed = stage_fingerprints(ExtendedConfig.model_validate({**raw, "notes": "a real change"}))
    assert changed == today, "a top-level field no stage reads enters no fingerprint"
    raw["teacher"]["training"]["epochs"] = 5
    assert stage_fingerprints(config_from_dict(raw))["teacher"] != today["teacher"]


def test_a_real_input_change_moves_the_old_outputs_aside(tmp_path, capsys):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    first = open_run(config_from_dict(raw), run_dir)
    teacher = first.layout.teacher
    teacher.mkdir(parents=True)
    (teacher / "eval.json").write_text('{"old": true}')

    runs = []

    def work() -> StageResult:
        runs.append(1)
        teacher.mkdir(parents=True, exist_ok=True)
        (teacher / "eval.json").write_text(f'{{"run": {len(runs)}}}')
        return StageResult({}, "teacher written")

    assert run_stage(first, "teacher", [teacher / "eval.json"], work, "fine-tuning", aside=[teacher])
    raw["teacher"]["training"]["epochs"] = 5
    second = open_run(config_from_dict(raw), run_dir)
    capsys.readouterr()
    assert run_stage(second, "teacher", [teacher / "eval.json"], work, "fine-tuning", aside=[teacher])
    out = capsys.readouterr().out
    kept = list((run_dir / "previous").glob("teacher-*"))
    assert len(kept) == 1 and f"the previous outputs are kept in {kept[0]}" in out
    assert (kept[0] / "teacher" / "eval.json").read_text() == '{"run": 1}'
    assert (teacher / "eval.json").read_text() == '{"run": 2}'


def test_an_unreadable_config_yaml_carries_nothing_over(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    (run_dir / "config.yaml").write_text("students: [\n", encoding="utf-8")
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run = open_run(config_from_dict(raw), run_dir)
    assert not any("migrated_from_rule" in entry for entry in run.manifest["stages"].values())
    with pytest.raises(AssertionError, match="recomputed"):
        run_stage(run, "teacher", [], fail_if_called, "would work")


def test_a_data_file_edited_under_a_finished_run_makes_its_stages_recompute(tmp_path, capsys):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("sentence\tlabel\ngood \t1\n")
    dev.write_text("sentence\tlabel\nbad \t0\n")
    raw["data"].update(train=str(train), validation=str(dev))
    run_dir = tmp_path / "run"
    output = run_dir / "outputs" / "teacher"
    output.parent.mkdir(parents=True)
    output.write_text("done")
    calls = []

    def work() -> StageResult:
        calls.append(1)
        return StageResult({}, "done")

    assert run_stage(open_run(config_from_dict(raw), run_dir), "teacher", [output], work, "working")
    assert not run_stage(open_run(config_from_dict(raw), run_dir), "teacher", [output], work, "working")
    dev.write_text("sentence\tlabel\nbad \t1\n")  # same path, new content
    capsys.readouterr()
    assert run_stage(open_run(config_from_dict(raw), run_dir), "teacher", [output], work, "working")
    assert "[teacher] the data files changed since the last run: recomputing" in capsys.readouterr().out
    assert len(calls) == 2


def test_a_refused_change_puts_the_finished_outputs_back(tmp_path, capsys):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    run = open_run(config_from_dict(raw), run_dir)
    teacher = run.layout.teacher

    def finish() -> StageResult:
        teacher.mkdir(parents=True, exist_ok=True)
        (teacher / "eval.json").write_text('{"finished": true}')
        return StageResult({}, "teacher written")

    assert run_stage(run, "teacher", [teacher / "eval.json"], finish, "fine-tuning", aside=[teacher])
    finished = read_json(run.layout.manifest)["stages"]["teacher"]
    before = (run_dir / "config.yaml").read_bytes()

    def refuse() -> StageResult:
        teacher.mkdir(parents=True, exist_ok=True)
        (teacher / "partial.bin").write_text("half a teacher")
        raise TeacherError("the teacher is no better than chance")

    raw["teacher"]["source"] = "/elsewhere/teacher"
    changed = open_run(config_from_dict(raw), run_dir)
    with pytest.raises(TeacherError):
        run_stage(changed, "teacher", [teacher / "eval.json"], refuse, "fine-tuning", aside=[teacher])
    assert sorted(p.name for p in teacher.iterdir()) == ["eval.json"]
    assert (teacher / "eval.json").read_text() == '{"finished": true}'
    assert read_json(run.layout.manifest)["stages"]["teacher"] == finished
    assert (run_dir / "config.yaml").read_bytes() == before
    assert "[teacher] refused; the earlier outputs are back in place" in capsys.readouterr().out
    again = open_run(config_from_dict(yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))), run_dir)
    assert run_stage(again, "teacher", [teacher / "eval.json"], fail_if_called, "fine-tuning") is False


def test_going_back_to_earlier_inputs_brings_their_outputs_back_from_previous(tmp_path, capsys):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    teacher = RunLayout(run_dir).teacher

    def write(text: str):
        def work() -> StageResult:
            teacher.mkdir(parents=True, exist_ok=True)
            (teacher / "eval.json").write_text(text)
            return StageResult({}, "written")

        return work

    first = open_run(config_from_dict(raw), run_dir)
    assert run_stage(first, "teacher", [teacher / "eval.json"], write("epochs 2"), "training", aside=[teacher])
    raw["teacher"]["training"]["epochs"] = 5
    assert run_stage(
        open_run(config_from_dict(raw), run_dir), "teacher", [teacher / "eval.json"], write("epochs 5"), "training",
        aside=[teacher],
    )  # fmt: skip
    raw["teacher"]["training"]["epochs"] = 2
    capsys.readouterr()
    back = open_run(config_from_dict(raw), run_dir)
    assert run_stage(back, "teacher", [teacher / "eval.json"], fail_if_called, "training", aside=[teacher]) is False
    assert "its outputs are back in place" in capsys.readouterr().out
    assert (teacher / "eval.json").read_text() == "epochs 2"
    assert read_json(back.layout.manifest)["stages"]["teacher"]["fingerprint"] == back.fingerprints["teacher"]
    kept = [path / "teacher" / "eval.json" for path in (run_dir / "previous").glob("teacher-*")]
    assert [path.read_text() for path in kept] == ["epochs 5"], "the newer outputs are kept in their turn"


# --- outputs checked by content -----------------------------------------------------------------------------------


def export_into(layout: RunLayout, calls: list[int]):
    """A stand-in export stage: one bundle with a model, an INT8 model and a fidelity record (what the manifest
    checks), plus a training log and a hidden staging file (which it leaves out)."""
    bundle = layout.onnx / "s2"

    def work() -> StageResult:
        calls.append(1)
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "model.onnx").write_bytes(b"graph" * 1000)
        (bundle / "model.int8.onnx").write_bytes(b"int8" * 500)
        (bundle / "fidelity.json").write_text("{}")
        (bundle / "logs").mkdir(exist_ok=True)
        (bundle / "logs" / "train_log.jsonl").write_text("{}\n")
        (layout.onnx / ".s2.staging.tmp").write_text("half")
        return StageResult({}, "exported")

    return work, [bundle / "fidelity.json"], [layout.onnx]


@pytest.mark.parametrize(
    ("damage", "how"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:100]), "changed"),
        (lambda path: path.write_bytes(path.read_bytes().replace(b"graph", b"GRAPH", 1)), "changed"),
        (Path.unlink, "is missing"),
    ],
    ids=["cut-short", "same-size-other-bytes", "deleted"],
)
def test_an_output_damaged_after_its_stage_finished_is_recomputed_and_kept_aside(tmp_path, capsys, damage, how):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    layout, calls = RunLayout(run_dir), []
    work, outputs_, aside = export_into(layout, calls)

    def again(action=work) -> bool:
        return run_stage(open_run(config_from_dict(raw), run_dir), "export", outputs_, action, "exporting", aside=aside)

    assert again()
    recorded = read_json(layout.manifest)["stages"]["export"]["output_files"]
    assert sorted(recorded) == ["onnx/s2/fidelity.json", "onnx/s2/model.int8.onnx", "onnx/s2/model.onnx"]
    assert recorded["onnx/s2/model.onnx"]["bytes"] == 5000
    assert again(fail_if_called) is False
    model = layout.onnx / "s2" / "model.onnx"
    damage(model)
    capsys.readouterr()
    assert again()
    out = capsys.readouterr().out
    (kept,) = (run_dir / "previous").glob("export-*")
    assert (
        f"[export] onnx/s2/model.onnx {how} since export finished: recomputing export; what it left is kept in {kept}"
        in out
    )
    assert read_json(kept / "entry.json")["status"] == "damaged", "never brought back as a finished output"
    assert model.read_bytes() == b"graph" * 1000 and len(calls) == 2
    assert again(fail_if_called) is False


def test_an_entry_recorded_before_output_digests_is_trusted(tmp_path):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    layout, calls = RunLayout(run_dir), []
    work, outputs_, aside = export_into(layout, calls)
    assert run_stage(open_run(config_from_dict(raw), run_dir), "export", outputs_, work, "exporting", aside=aside)
    manifest = read_json(layout.manifest)
    del manifest["stages"]["export"]["output_files"]  # as distill wrote it before this check existed
    write_json(layout.manifest, manifest)
    model = layout.onnx / "s2" / "model.onnx"
    model.write_bytes(model.read_bytes()[:10])
    again = open_run(config_from_dict(raw), run_dir)
    assert run_stage(again, "export", outputs_, fail_if_called, "exporting", aside=aside) is False


def test_a_large_output_is_checked_by_its_size_and_sampled_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "FULL_DIGEST_BYTES", 4096)
    monkeypatch.setattr(manifest_module, "SAMPLED_BLOCK_BYTES", 256)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 100)
    recorded = output_files(tmp_path, [weights])
    assert changed_output(tmp_path, {"output_files": recorded}) is None
    original = weights.read_bytes()
    weights.write_bytes(original[:-1])
    assert changed_output(tmp_path, {"output_files": recorded}) == ("model.safetensors", "changed")
    weights.write_bytes(original[: len(original) // 2] + bytes(len(original) - len(original) // 2))  # zeros, same size
    assert changed_output(tmp_path, {"output_files": recorded}) == ("model.safetensors", "changed")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(original)  # a copied run directory is the same run
    assert changed_output(copy, {"output_files": recorded}) is None


def test_a_stage_command_refuses_an_upstream_output_damaged_since_it_finished(tmp_path):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    run = open_run(config_from_dict(raw), run_dir)
    teacher = run.layout.teacher

    def finish() -> StageResult:
        teacher.mkdir(parents=True, exist_ok=True)
        (teacher / "eval.json").write_text("{}")
        (teacher / "model.safetensors").write_bytes(b"w" * 300)
        return StageResult({}, "teacher written")

    assert run_stage(run, "teacher", [teacher / "eval.json"], finish, "fine-tuning", aside=[teacher])
    require(open_run(config_from_dict(raw), run_dir), "teacher", "teacher")
    (teacher / "model.safetensors").write_bytes(b"w" * 30)
    with pytest.raises(StageError) as info:
        require(open_run(config_from_dict(raw), run_dir), "teacher", "teacher")
    assert str(info.value) == (
        f"{teacher / 'model.safetensors'} changed since stage teacher finished; rerun `distill teacher` "
        "(or `distill run`) to compute it again"
    )


def test_outputs_brought_back_from_previous_but_damaged_there_are_recomputed(tmp_path, capsys):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    teacher = RunLayout(run_dir).teacher

    def write(text: str):
        def work() -> StageResult:
            teacher.mkdir(parents=True, exist_ok=True)
            (teacher / "eval.json").write_text(text)
            return StageResult({}, "written")

        return work

    def stage(work) -> bool:
        return run_stage(open_run(config_from_dict(raw), run_dir), "teacher", [teacher / "eval.json"], work,
                         "training", aside=[teacher])  # fmt: skip

    assert stage(write("epochs 2"))
    raw["teacher"]["training"]["epochs"] = 5
    assert stage(write("epochs 5"))
    (kept,) = (run_dir / "previous").glob("teacher-*")
    (kept / "teacher" / "eval.json").write_text("epo")  # the earlier outputs, damaged while kept aside
    raw["teacher"]["training"]["epochs"] = 2
    capsys.readouterr()
    assert stage(write("epochs 2, again"))
    out = capsys.readouterr().out
    assert "its outputs are back in place" in out
    assert "[teacher] teacher/eval.json changed since teacher finished: recomputing teacher" in out
    assert (teacher / "eval.json").read_text() == "epochs 2, again"
