"""Graph optimisation and INT8 candidates under the fidelity budget: measurement, timing, selection, the sensitivity
search, static QDQ; the padding check; bundles without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from distill.bench import padding_check
from distill.bundle_records import Fidelity
from distill.config import ExportConfig, Int8Config
from distill.data import tokenize
from distill.export import export_onnx
from distill.fidelity import budget_failures, compare_outputs, select_fastest
from distill.files import read_json
from distill.int8 import Int8Spec, PreparedGraph, candidate_specs
from distill.optimize import INT8_FILE, OPTIMIZED_FILE, optimize_bundle
from distill.runtime import OVER_BUDGET_INT8_FILE, OnnxClassifier, create_session, onnx_logits, padded_feeds
from distill.sensitivity import Trial, search_exclusions, sensitive_nodes
from tests.conftest import REPO_ROOT, make_tiny_bert, tiny_task

EXPORT = ExportConfig(check_shapes=[(1, 16), (4, 24)], selection_warmup=1, selection_iterations=5)
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def exported(tiny_bert_dir: Path, tmp_path_factory):
    """A tiny BERT exported to a bundle, with its tokenised dev rows and labels."""
    data_dir = tmp_path_factory.mktemp("optimize_data")
    data = tiny_task(data_dir, 48)
    validation = tokenize(data.validation, AutoTokenizer.from_pretrained(tiny_bert_dir), 32)
    bundle = data_dir / "bundle"
    export_onnx(tiny_bert_dir, bundle, EXPORT, validation)
    return bundle, validation.select_columns(INPUTS).to_list(), np.asarray(data.validation["label"])


def fresh_copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def optimise(bundle, cfg, rows, labels, **kwargs):
    """:func:`optimize_bundle` with batch-1 timings on one thread at sequence 16, as every test here uses it."""
    return optimize_bundle(bundle, cfg, rows, labels, ["accuracy"], seq_length=16, threads=1, **kwargs)


def test_every_candidate_is_measured_and_the_fastest_within_budget_ships(exported, tmp_path):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    record = optimise(bundle, EXPORT, rows, labels, calibration=rows[:8], unlabelled=rows[8:20])

    optimized = record["optimized"]
    assert optimized["fused_ops"]["Attention"] == 4, "one fused attention per layer (eager export, TorchScript)"
    assert optimized["fused_ops"]["EmbedLayerNormalization"] == 1
    assert optimized["flip_rate"] == 0.0 and optimized["max_abs_diff"] < 1e-3
    faster = optimized["p50_ms"] < optimized["plain_p50_ms"]
    assert optimized["kept"] == faster == (bundle / OPTIMIZED_FILE).is_file(), "the faster fp32 graph ships"

    candidates = record["int8"]["candidates"]
    settings = [candidate["setting"] for candidate in candidates]
    assert settings == [spec.label for spec in candidate_specs(EXPORT.int8, bundle / "model.onnx", bundle)]
    assert any("static QDQ" in label for label in settings) and any("embeddings" in label for label in settings)
    for candidate in candidates:
        assert candidate.get("error") is None, candidate
        assert candidate["examples"] == len(rows) + 12 and candidate["dev_examples"] == len(rows)
        low, high = candidate["flip_interval"]
        assert low <= candidate["flip_rate"] <= high
        assert {"metric_drop", "padding_passed", "p50_ms", "size_bytes"} <= set(candidate)
    shipped = [candidate for candidate in candidates if candidate["shipped"]]
    assert len(shipped) == 1 and record["int8"]["kept"] and (bundle / INT8_FILE).is_file()
    passing = [c for c in candidates if c["passed"] and c["padding_passed"]]
    assert shipped[0]["p50_ms"] == min(c["p50_ms"] for c in passing), "the fastest passing candidate ships"
    assert (bundle / INT8_FILE).stat().st_size == shipped[0]["size_bytes"]
    assert record["int8"]["timing"]["batch"] == 1 and record["int8"]["timing"]["seq"] == 16
    stored = read_json(bundle / "fidelity.json")
    assert stored["int8"] == record["int8"], "the record is merged into fidelity.json"
    assert Fidelity.model_validate(stored).int8.chosen().setting == shipped[0]["setting"]


def test_impossible_budget_ships_fp32_only_and_keeps_the_fastest_int8_for_the_report(exported, tmp_path):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    # A negative allowed drop cannot be met by any setting (the config itself only accepts drops >= 0).
    int8 = Int8Config.model_construct(**{**Int8Config().model_dump(), "max_flip_rate": 0.0, "max_metric_drop": -1.0})
    record = optimise(
        bundle, EXPORT.model_copy(update={"int8": int8}), rows, labels, calibration=rows[:8], keep_over_budget=True
    )
    candidates = record["int8"]["candidates"]
    assert len(candidates) >= 5 and not any(candidate["passed"] for candidate in candidates)
    assert not record["int8"]["kept"] and not (bundle / INT8_FILE).exists()
    assert "fidelity budget" in record["int8"]["reason"]
    over = record["int8"]["over_budget"]
    assert (bundle / OVER_BUDGET_INT8_FILE).is_file() and over["note"].startswith("over budget: dev accuracy drop")
    fastest = min((c for c in candidates if c["padding_passed"]), key=lambda c: c["p50_ms"])
    assert over["setting"] == fastest["setting"]
    assert OnnxClassifier(bundle).session._model_path in (str(bundle / "model.onnx"), str(bundle / OPTIMIZED_FILE))


def test_optimisation_outside_budget_keeps_the_unoptimised_graph(exported, tmp_path):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    np.save(bundle / "dev_logits.npy", -np.load(bundle / "dev_logits.npy"))  # every reference prediction flipped
    record = optimise(bundle, EXPORT.model_copy(update={"int8": Int8Config(enabled=False)}), rows, labels)
    assert not record["optimized"]["kept"] and not (bundle / OPTIMIZED_FILE).exists()
    assert "unoptimised graph is kept" in record["optimized"]["reason"]


def test_a_fused_graph_slower_than_the_plain_one_is_not_shipped(exported, tmp_path, monkeypatch):
    import distill.fusion

    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    timed = {"fused": 1.4, "apart": 1.5, "fp32": 1.0, "fp32-opt": 1.5}
    monkeypatch.setattr(distill.fusion, "interleaved_p50", lambda runners, *args: {key: timed[key] for key in runners})
    record = optimise(bundle, EXPORT.model_copy(update={"int8": Int8Config(enabled=False)}), rows, labels)
    optimized = record["optimized"]
    assert optimized["p50_ms"] == 1.5 and optimized["plain_p50_ms"] == 1.0
    assert not optimized["kept"] and not (bundle / OPTIMIZED_FILE).exists() and "not faster" in optimized["reason"]


@pytest.mark.parametrize("faster", ["apart", "fused"])
def test_the_faster_layer_norm_layout_ships_and_the_bundle_serves_it_as_timed(exported, tmp_path, monkeypatch, faster):
    import onnx

    import distill.fusion
    import distill.runtime
    from distill.fusion import SKIP_LAYER_NORM_FUSION
    from distill.report.model_card import _session_options
    from distill.runtime import DISABLED_OPTIMIZERS_KEY, bundle_disabled_optimizers

    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    config = read_json(bundle / "config.json")
    (bundle / "config.json").write_text(json.dumps({**config, DISABLED_OPTIMIZERS_KEY: ["Stale"]}))  # earlier run
    timed = {"fused": 2.0, "apart": 2.0, faster: 1.0, "fp32": 3.0, "fp32-opt": 1.0}
    monkeypatch.setattr(distill.fusion, "interleaved_p50", lambda runners, *args: {key: timed[key] for key in runners})
    record = optimise(bundle, EXPORT.model_copy(update={"int8": Int8Config(enabled=False)}), rows, labels)

    choice = record["optimized"]["layer_norm"]
    assert choice == {"kept": faster, "fused_p50_ms": timed["fused"], "apart_p50_ms": timed["apart"]}
    ops = [node.op_type for node in onnx.load(str(bundle / OPTIMIZED_FILE)).graph.node]
    assert ("SkipLayerNormalization" in ops) == (faster == "fused")
    assert ("LayerNormalization" in ops) == (faster == "apart") and "Attention" in ops
    assert record["optimized"]["kept"] and record["optimized"]["flip_rate"] == 0.0
    assert not list(bundle.glob(".apart*")), "the slower layout is not left in the bundle"
    expected = (SKIP_LAYER_NORM_FUSION,) if faster == "apart" else ()
    assert bundle_disabled_optimizers(bundle) == expected, "the stale choice is replaced"
    rest = {key: value for key, value in read_json(bundle / "config.json").items() if key != DISABLED_OPTIMIZERS_KEY}
    assert rest == {key: value for key, value in config.items() if key != DISABLED_OPTIMIZERS_KEY}, "the rest is kept"
    assert bool(_session_options(bundle)) == (faster == "apart")

    opened = []
    real = distill.runtime.ort.InferenceSession
    monkeypatch.setattr(
        distill.runtime.ort, "InferenceSession", lambda *args, **kwargs: opened.append(kwargs) or real(*args, **kwargs)
    )
    served = OnnxClassifier(bundle, model_file=OPTIMIZED_FILE)
    assert opened[-1].get("disabled_optimizers", []) == list(expected), "sessions of the bundle run as timed"
    logits = onnx_logits(served.session, rows)
    assert np.abs(logits - np.load(bundle / "dev_logits.npy")).max() < 1e-4


def test_static_qdq_candidate_loads_in_onnxruntime_and_matches_fp32(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    bundle, rows, _ = exported
    spec = Int8Spec("static", bundle / "model.onnx", static=True, per_channel=True)
    with PreparedGraph(spec.source, Int8Config(), calibration=rows[:16]) as prepared:
        prepared.quantize(spec, tmp_path / "static.onnx")
    graph = onnx.load(str(tmp_path / "static.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "MatMulInteger" not in ops, "QDQ, not dynamic"
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    dequantize_scales = [values[node.input[1]] for node in graph.node if node.op_type == "DequantizeLinear"]
    assert any(scale.ndim == 1 and scale.size == 32 for scale in dequantize_scales), "weights per output channel"
    quantize_scales = [values[node.input[1]] for node in graph.node if node.op_type == "QuantizeLinear"]
    assert quantize_scales and all(scale.ndim == 0 for scale in quantize_scales), "activations per tensor"
    fp32 = onnx_logits(create_session(bundle / "model.onnx", 1), rows, batch_size=1)
    int8 = onnx_logits(create_session(tmp_path / "static.onnx", 1), rows, batch_size=1)
    # Stated tolerance: within 10% of the fp32 logits' largest magnitude (a random tiny BERT's logits are ~0.02).
    assert np.abs(int8 - fp32).max() <= 0.1 * np.abs(fp32).max()


def test_fastest_passing_selection_never_ships_a_padding_failure():
    def candidate(p50, passed=True, padding=True):
        return {"p50_ms": p50, "passed": passed, "padding_passed": padding}

    assert select_fastest([candidate(3.0), candidate(2.0), candidate(2.5)]) == 1
    assert select_fastest([candidate(3.0), candidate(1.0, passed=False), candidate(2.5)]) == 2
    assert select_fastest([candidate(3.0), candidate(1.0, padding=False)]) == 0, "a padding failure never ships"
    assert select_fastest([candidate(1.0, padding=False), candidate(2.0, passed=False)]) is None
    assert select_fastest([{"passed": True, "padding_passed": True, "error": "failed to build"}]) is None


def test_among_equally_fast_candidates_the_smallest_file_ships():
    def candidate(p50, size, passed=True):
        return {"p50_ms": p50, "passed": passed, "padding_passed": True, "size_bytes": size}

    # 2.94 and 2.97 ms are one speed (within 5%): the 17.5 MB graph with INT8 embeddings wins over the 53 MB one
    assert select_fastest([candidate(2.94, 53.2e6), candidate(2.97, 17.5e6), candidate(3.15, 17.6e6)]) == 1
    assert select_fastest([candidate(2.94, 53.2e6), candidate(3.13, 17.5e6)]) == 0, "6% slower is slower"
    assert select_fastest([candidate(2.94, 53.2e6), candidate(2.90, 17.5e6, passed=False)]) == 0


def test_greedy_search_finds_the_smallest_set_that_passes():
    effect = {"a": 4, "c": 4, "e": 1}  # violations removed by keeping each node in fp32

    def measure(excluded):
        violations = 10 - sum(effect.get(node, 0) for node in excluded)
        return Trial(excluded, violations, violations / 100, violations <= 2)

    groups = [["a", "b", "c"], ["d", "e", "f"]]
    search = search_exclusions(groups, measure, max_trials=20)
    assert search.passed and sorted(search.excluded) == ["a", "c"], "e helps too but is not needed"
    assert len(search.trials) <= 20
    capped = search_exclusions(groups, measure, max_trials=3)
    assert not capped.passed and len(capped.trials) <= 3
    assert search_exclusions([["a"]], lambda excluded: Trial(excluded, 0, 0.0, True), 5).excluded == ()


PLANTED = "/bert/encoder/layer.2/output/dense/MatMul"


def planted_bundle(tmp_path: Path):
    """A tiny regression BERT whose ``PLANTED`` MatMul gets an outlier row that multiplies an always-zero activation:
    harmless in fp32, but its quantisation scale then rounds every other weight of that matrix to zero. Returns
    the bundle, its tokenised dev rows and their labels."""
    import torch
    from transformers import BertForSequenceClassification

    model_dir = make_tiny_bert(tmp_path / "model", num_labels=1)  # regression: held to a score tolerance
    model = BertForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        layer = model.bert.encoder.layer[2]
        layer.intermediate.dense.bias[5] = -100.0  # GELU(-100) == 0: unit 5 never fires
        layer.output.dense.weight.mul_(50.0)
        layer.output.dense.weight[:, 5] = 1000.0
    model.save_pretrained(model_dir)
    data = tiny_task(tmp_path, 48)
    validation = tokenize(data.validation, AutoTokenizer.from_pretrained(model_dir), 32)
    export_onnx(model_dir, tmp_path / "bundle", ExportConfig(check_shapes=[(1, 16)]), validation)
    labels = np.asarray(data.validation["label"], dtype=np.float32)
    return tmp_path / "bundle", validation.select_columns(INPUTS).to_list(), labels


def test_sensitivity_search_finds_a_planted_sensitive_node(tmp_path):
    bundle, rows, labels = planted_bundle(tmp_path)
    fp32 = onnx_logits(create_session(bundle / "model.onnx", 1), rows, batch_size=1)
    cfg = Int8Config(max_score_change_p99=2e-3, sensitivity_max_trials=16)
    spec = Int8Spec("dynamic", bundle / "model.onnx", static=False, per_channel=False)
    with PreparedGraph(spec.source, cfg) as prepared:
        assert PLANTED in prepared.quantisable_nodes(spec)
        prepared.quantize(spec, tmp_path / "int8.onnx")
        int8 = onnx_logits(create_session(tmp_path / "int8.onnx", 1), rows, batch_size=1)
        assert budget_failures(compare_outputs(fp32, int8, labels, ["pearson"]), cfg), "the plant breaks the budget"
        search = sensitive_nodes(prepared, spec, rows, fp32, int8, num_layers=4, threads=1)
    assert search.passed and search.excluded == (PLANTED,), search.trials
    assert len(search.trials) <= 16


def test_export_ships_the_candidate_with_only_the_sensitive_node_in_fp32(tmp_path):
    bundle, rows, labels = planted_bundle(tmp_path)
    int8 = Int8Config(
        mode="dynamic",
        per_channel=False,
        quantize_embeddings=False,
        max_score_change_p99=2e-3,
        sensitivity_max_trials=16,
    )
    cfg = EXPORT.model_copy(update={"optimize": False, "int8": int8})
    record = optimize_bundle(bundle, cfg, rows, labels, ["pearson"], seq_length=16, threads=1)["int8"]
    assert record["sensitivity"]["excluded_nodes"] == [PLANTED]
    first, found = record["candidates"]
    assert not first["passed"] and "p99 score change" in first["reason"] and not first["shipped"]
    assert found["passed"] and found["shipped"] and found["excluded_nodes"] == [PLANTED]
    assert found["setting"] == "dynamic per-tensor (plain), 1 node(s) kept in fp32"
    assert record["kept"] and (bundle / INT8_FILE).is_file()


def test_regression_budget_fails_on_a_planted_large_change():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 5, size=(200, 1)).astype(np.float32)
    labels = reference[:50, 0] + rng.normal(0, 0.3, 50)  # the first 50 rows are dev
    nudged = reference + rng.normal(0, 0.01, size=reference.shape).astype(np.float32)
    cfg = Int8Config()
    check = compare_outputs(reference, nudged, labels, ["pearson"])
    assert check["prediction_flips"] == 0 and check["score_change_max"] < 0.1 and not budget_failures(check, cfg)
    planted = nudged.copy()
    planted[120, 0] += 0.76  # one unlabelled row moved by 0.76 on a 0-5 scale
    failures = budget_failures(compare_outputs(reference, planted, labels, ["pearson"]), cfg)
    assert len(failures) == 1 and failures[0].startswith("largest score change 0.7")
    shifted = reference + np.where(np.arange(200) % 10 == 0, 0.2, 0.0)[:, None].astype(np.float32)
    failures = budget_failures(compare_outputs(reference, shifted, labels, ["pearson"]), cfg)
    assert len(failures) == 1 and failures[0].startswith("p99 score change 0.2")


def test_padding_check_can_fail_a_regression_model():
    def run(feeds):  # a score that grows with the padded width: padding leaks into the output
        return [feeds["attention_mask"].sum(axis=1, keepdims=True) * 0.0 + feeds["input_ids"].shape[1] * 0.01]

    rows = [{"input_ids": [2] + [5] * length + [3]} for length in range(1, 20)]
    check = padding_check(run, ["input_ids", "attention_mask"], rows, atol=0.1)
    assert not check["passed"] and check["flips"] == 0 and check["max_abs_diff"] > 0.1
    assert padding_check(lambda feeds: [np.ones((feeds["input_ids"].shape[0], 1))], ["input_ids"], rows)["passed"]


def test_padding_check_passes_for_masked_models_and_catches_mask_bugs(exported):
    bundle, rows, _ = exported
    session = create_session(bundle / "model.onnx", threads=1)

    def run(feeds):
        return session.run(None, feeds)

    def ignore_mask(feeds):
        return session.run(None, {**feeds, "attention_mask": np.ones_like(feeds["attention_mask"])})

    good = padding_check(run, INPUTS, rows)
    assert good["passed"] and good["within_atol"] and good["max_abs_diff"] < 1e-4
    bad = padding_check(ignore_mask, INPUTS, rows)
    assert bad["max_abs_diff"] > 100 * max(good["max_abs_diff"], 1e-7), "attending to padding moves the logits"


def test_padded_feeds_pads_right_with_zero_mask():
    feeds = padded_feeds(
        [{"input_ids": [2, 5, 3], "attention_mask": [1, 1, 1]}, {"input_ids": [2, 3]}], ["input_ids", "attention_mask"]
    )
    assert feeds["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_predict_runs_without_torch_and_matches_plain_onnxruntime(exported, tmp_path):
    bundle, _, _ = exported
    bundle = fresh_copy(bundle, tmp_path)
    optimise(bundle, EXPORT, *exported[1:], calibration=exported[1][:8])
    texts = ["great fun movie", "awful boring plot"]
    blocker = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from distill.cli import main\n"
        f"sys.argv = ['distill', 'predict', {str(bundle)!r}, *{texts!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    predicted = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["text"] for p in predicted] == texts

    # The same bundle with nothing but onnxruntime and tokenizers, as a deployer would load it.
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    session = onnxruntime.InferenceSession(str(bundle / INT8_FILE), providers=["CPUExecutionProvider"])
    id2label = json.loads((bundle / "config.json").read_text()).get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
    for text, expected in zip(texts, predicted, strict=True):
        encoding = tokenizer.encode(text)
        feeds = {
            "input_ids": np.array([encoding.ids]),
            "attention_mask": np.array([encoding.attention_mask]),
            "token_type_ids": np.array([encoding.type_ids]),
        }
        logits = session.run(None, feeds)[0][0]
        assert id2label[str(int(logits.argmax()))] == expected["label"]
    assert OnnxClassifier(bundle).predict(texts) == [{"label": p["label"], "score": p["score"]} for p in predicted]


def test_predict_reports_a_missing_bundle_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "distill", "predict", str(tmp_path / "nope"), "hello"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: bundle") and len(result.stderr.strip().splitlines()) == 1


def test_quantisation_leaves_no_scratch_files_in_the_working_directory(exported, tmp_path, monkeypatch):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path / "copy")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    cfg = EXPORT.model_copy(
        update={"optimize": False, "int8": Int8Config(mode="static", max_flip_rate=1.0, max_metric_drop=1.0)}
    )
    record = optimise(bundle, cfg, rows, labels, calibration=rows[:8])
    assert record["int8"]["kept"] and record["int8"]["chosen_setting"].startswith("static QDQ")
    assert list(workdir.iterdir()) == [], "ORT's shape inference must not dump files where the user runs distill"


def test_excluded_op_types_keep_fused_attention_in_fp32_and_quantise_the_rest(exported, tmp_path):
    import onnx

    from distill.fusion import optimize_graph

    bundle, _, _ = exported
    fused = tmp_path / "fused.onnx"
    optimize_graph(bundle / "model.onnx", fused, num_heads=4, hidden_size=32)
    ops = {}
    for label, excluded in (("all", []), ("attention fp32", ["Attention"])):
        spec = Int8Spec(label, fused, static=False, per_channel=False)
        with PreparedGraph(fused, Int8Config(exclude_op_types=excluded)) as prepared:
            prepared.quantize(spec, tmp_path / f"{label}.onnx")
        ops[label] = [node.op_type for node in onnx.load(str(tmp_path / f"{label}.onnx")).graph.node]
    assert ops["all"].count("QAttention") == 4 and "Attention" not in ops["all"]
    assert ops["attention fp32"].count("Attention") == 4 and "QAttention" not in ops["attention fp32"]
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in ops["attention fp32"])


def test_embedding_candidate_quantises_the_tables(exported, tmp_path):
    bundle, rows, _ = exported
    sizes = {}
    for embeddings in (False, True):
        spec = Int8Spec("e", bundle / "model.onnx", static=False, per_channel=True, embeddings=embeddings)
        with PreparedGraph(spec.source, Int8Config()) as prepared:
            gathers = [name for name in prepared.quantisable_nodes(spec) if "embeddings" in name]
            assert bool(gathers) == embeddings
            prepared.quantize(spec, tmp_path / f"{embeddings}.onnx")
        sizes[embeddings] = (tmp_path / f"{embeddings}.onnx").stat().st_size
        create_session(tmp_path / f"{embeddings}.onnx", 1)
    assert sizes[True] < sizes[False]


def test_embedding_candidate_of_the_fused_graph_quantises_its_embed_layer_norm(exported, tmp_path):
    import onnx

    from distill.fusion import optimize_graph

    bundle, rows, _ = exported
    fused = tmp_path / "fused.onnx"
    optimize_graph(bundle / "model.onnx", fused, num_heads=4, hidden_size=32)
    outputs, sizes = {}, {}
    for embeddings in (False, True):
        spec = Int8Spec("e", fused, static=False, per_channel=True, embeddings=embeddings)
        target = tmp_path / f"{embeddings}.onnx"
        with PreparedGraph(fused, Int8Config()) as prepared:
            fused_tables = [name for name in prepared.quantisable_nodes(spec) if "EmbedLayer" in name]
            assert len(fused_tables) == int(embeddings)
            prepared.quantize(spec, target)
        ops = [node.op_type for node in onnx.load(str(target)).graph.node]
        assert ("QEmbedLayerNormalization" in ops) == embeddings and ("EmbedLayerNormalization" in ops) != embeddings
        sizes[embeddings] = target.stat().st_size
        outputs[embeddings] = onnx_logits(create_session(target, 1), rows[:8])
    assert sizes[True] < sizes[False], sizes
    assert np.abs(outputs[True] - outputs[False]).max() < 0.5, "the INT8 tables change the logits only a little"


def test_candidate_table_and_old_fidelity_records():
    from types import SimpleNamespace

    from distill.report.candidates import COLUMNS, candidate_rows

    old = Fidelity.model_validate(
        {
            "max_abs_diff": 1e-5,
            "int8": {
                "enabled": True,
                "kept": True,
                "attempts": [
                    {"setting": "as configured", "passed": False, "flip_rate": 0.0103, "metric_drop": 0.0},
                    {"setting": "per-channel weights", "passed": True, "flip_rate": 0.005, "metric_drop": 0.001},
                ],
            },
        }
    )
    assert old.int8.chosen().setting == "per-channel weights" and old.int8.candidates == []
    new = Fidelity.model_validate(
        {
            "max_abs_diff": 1e-5,
            "int8": {
                "enabled": True,
                "kept": True,
                "candidates": [
                    {
                        "setting": "dynamic per-tensor (fused)",
                        "passed": False,
                        "flip_rate": 0.0241,
                        "prediction_flips": 70,
                        "examples": 2872,
                        "flip_interval": [0.019, 0.030],
                        "metric_drop": 0.004,
                        "padding_passed": True,
                        "p50_ms": 2.1,
                        "size_bytes": 18_000_000,
                        "reason": "2.41% flips > 1.00%",
                    },
                    {
                        "setting": "static QDQ per-channel (plain)",
                        "passed": True,
                        "shipped": True,
                        "flip_rate": 0.004,
                        "examples": 2872,
                        "metric_drop": 0.0,
                        "padding_passed": True,
                        "p50_ms": 2.4,
                    },
                    {"setting": "dynamic per-channel + embeddings (plain)", "error": "unsupported op"},
                ],
            },
        }
    )
    assert new.int8.chosen().setting == "static QDQ per-channel (plain)"
    rows = candidate_rows(SimpleNamespace(fidelities={"teacher": new, "old": old}))
    assert len(rows) == 3 and all(len(row) == len(COLUMNS) for row in rows)
    assert rows[0][2] == "2.41% (1.90-3.00%), 70 of 2872" and rows[0][-1] == "over budget: 2.41% flips > 1.00%"
    assert rows[1][-1] == "**shipped**" and rows[2][-1] == "error: unsupported op"


def test_a_graph_given_by_a_relative_path_is_prepared(tmp_path, monkeypatch, exported):
    """The scratch directory becomes the working directory during pre-processing: a relative source path must have
    been resolved before (a run directory given as ``runs/NAME`` once lost every INT8 candidate this way)."""
    shutil.copy(exported[0] / "model.onnx", tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    with PreparedGraph(Path("model.onnx"), Int8Config()) as prepared:
        assert prepared.nodes and prepared.source == tmp_path / "model.onnx"


def test_interleaved_timing_runs_each_graph_in_turns_of_several_calls_and_times_the_settled_ones():
    import time

    from distill.timing import interleaved_p50, latency_inputs

    calls: list[str] = []

    def runner(name: str):
        def run(feeds):
            if calls and calls[-1] != name:
                time.sleep(0.05)  # the first call after another graph's: slowed by its spinning threads
            calls.append(name)

        return run, ["input_ids"]

    feeds = latency_inputs(np.arange(10, 20), 1, 4, seed=0)
    p50 = interleaved_p50({"a": runner("a"), "b": runner("b")}, feeds, warmup=0, iterations=7, block=5, settle=2)
    assert calls[:10] == ["a"] * 5 + ["b"] * 5, "one turn is a block of consecutive calls of one graph"
    assert len(calls) == 2 * 5 * 3, "ceil(7 / 3) turns of each graph"
    assert set(p50) == {"a", "b"} and max(p50.values()) < 25, "the slowed first call of each turn is not timed"


def test_interleaved_timing_divides_out_a_slow_spell_that_hit_some_graphs_more_than_others(monkeypatch):
    import distill.timing
    from distill.timing import interleaved_p50, latency_inputs

    clock = [0.0]
    monkeypatch.setattr(distill.timing.time, "perf_counter", lambda: clock[0])
    base = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}  # ms
    calls = dict.fromkeys(base, 0)

    def runner(name: str):
        def run(feeds):
            turn = calls[name] // 2  # two calls per turn, so the turn's index is the round's
            slow = turn < 2 or (turn == 2 and name != "d")  # a spell over rounds 0-1 and most of round 2
            clock[0] += base[name] * (1.5 if slow else 1.0) / 1000
            calls[name] += 1

        return run, ["input_ids"]

    feeds = latency_inputs(np.arange(10, 20), 1, 4, seed=0)
    runners = {name: runner(name) for name in base}
    timed = interleaved_p50(runners, feeds, warmup=0, iterations=10, block=2, settle=0, pause=0)
    assert calls == dict.fromkeys(base, 10), "five rounds of one two-call turn per graph"
    ratios = {name: timed[name] / timed["a"] for name in base}
    assert ratios == pytest.approx({name: base[name] / base["a"] for name in base}), (
        "a plain median per graph gives d/a = 2.67 here: d ran its third turn after the spell ended"
    )
