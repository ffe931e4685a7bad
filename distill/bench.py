"""Dev accuracy and CPU latency of every artifact (PyTorch and ONNX Runtime) under one fixed protocol."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import click
import datasets
import numpy as np
import onnx
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from distill.bundle_records import Fidelity
from distill.config import BenchConfig, Config
from distill.data import TaskData, tokenize
from distill.env import available_cores, host_info, library_versions, other_cpu_load
from distill.errors import ConfigError, StageError
from distill.evaluate import MODEL_INPUTS, predict_logits
from distill.fidelity import padding_check
from distill.files import write_json
from distill.layout import TEACHER, TWIN_SUFFIX, RunLayout
from distill.metrics import agreement, compute_metrics, predictions_from_logits
from distill.records import ArtifactRow, BenchResults
from distill.runtime import (
    MODEL_FILES,
    OVER_BUDGET_INT8_FILE,
    create_session,
    length_sorted_batches,
    onnx_logits,
    padded_feeds,
)
from distill.timing import interleaved_p50, latency_inputs

MIN_TIMED_ITERATIONS = 5
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


@dataclass
class Artifact:
    """One model to measure.

    Attributes:
        name: how reports call it (``"teacher"``, ``"distil3"``).
        runtime: ``"pytorch"`` (``path`` is a ``save_pretrained`` dir) or ``"onnxruntime"`` (``path`` is a ``.onnx``).
        precision: the weights' number format, e.g. ``"fp32"``.
        role: ``"teacher"`` or ``"student"``.
    """

    name: str
    runtime: Literal["pytorch", "onnxruntime"]
    precision: str
    path: Path
    role: Literal["teacher", "student"]
    over_budget: str | None = None
    """Set for an INT8 graph benchmarked though not shipped: why it is not (``"over budget: ..."``)."""
    padding_atol: float = 1e-3
    """A regression model's largest allowed score change in the padding check."""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.runtime not in ("pytorch", "onnxruntime") or self.role not in ("teacher", "student"):
            raise ValueError(
                f"artifact {self.name}: runtime must be pytorch or onnxruntime and role teacher or "
                f"student, got runtime={self.runtime!r}, role={self.role!r}"
            )


def _max_positions(artifact: Artifact) -> int | None:
    config_path = artifact.path / "config.json" if artifact.path.is_dir() else artifact.path.parent / "config.json"
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text(encoding="utf-8")).get("max_position_embeddings")


def _check_artifacts(artifacts: list[Artifact], teacher_name: str, cfg: BenchConfig) -> Artifact:
    """The teacher's PyTorch artifact; also checks that paths exist and the grid fits every model."""
    for artifact in artifacts:
        if not artifact.path.exists():
            raise StageError(
                f"artifact {artifact.name} ({artifact.runtime}) is missing at {artifact.path}; "
                "run the stage that produces it first"
            )
        limit = _max_positions(artifact)
        if limit is not None and max(cfg.seq_lengths) > limit:
            raise ConfigError(
                f"bench.seq_lengths has {max(cfg.seq_lengths)} but {artifact.name} takes at most "
                f"{limit} tokens; lower bench.seq_lengths"
            )
    for artifact in artifacts:
        if artifact.name == teacher_name and artifact.runtime == "pytorch":
            return artifact
    raise StageError(
        f"no PyTorch artifact named {teacher_name!r} to compare against; include the teacher's "
        "PyTorch model in the artifact list"
    )


def onnx_parameter_count(path: Path) -> int:
    """Parameters of the model an ONNX file was exported from.

    Built on the meta device from the bundle's ``config.json`` (no weights are read), so the count equals the
    PyTorch source's; the exporter de-duplicates equal initializers, which would make a graph count too low.
    Without a config, falls back to the number of floating-point initializer values in the graph.
    """
    if (path.parent / "config.json").is_file():
        config = AutoConfig.from_pretrained(path.parent)
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        return sum(parameter.numel() for parameter in model.parameters())
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = [tensor for tensor in graph.initializer if tensor.data_type in FLOAT_TYPES]
    return int(sum(np.prod(tensor.dims, dtype=np.int64) for tensor in weights))


Runner = Callable[[dict[str, np.ndarray]], object]


def _load(
    artifact: Artifact, validation: datasets.Dataset, threads: int
) -> tuple[Runner, np.ndarray, int, int, list[str]]:
    """``(run one batch, dev logits (n, num_labels), size in bytes, parameters, input names)`` of an artifact."""
    columns = [name for name in MODEL_INPUTS if name in validation.column_names]
    if artifact.runtime == "onnxruntime":
        session = create_session(artifact.path, threads)
        names = [node.name for node in session.get_inputs()]
        logits = onnx_logits(session, validation.select_columns(columns).to_list())
        size = artifact.path.stat().st_size
        return (lambda feeds: session.run(None, feeds)), logits, size, onnx_parameter_count(artifact.path), names
    model = AutoModelForSequenceClassification.from_pretrained(
        artifact.path, dtype=torch.float32, use_safetensors=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(artifact.path)
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in MODEL_INPUTS if name in accepted]
    logits = predict_logits(model, validation, tokenizer, desc=None)
    size = sum(path.stat().st_size for path in artifact.path.glob("*.safetensors"))
    parameters = sum(parameter.numel() for parameter in model.parameters())

    @torch.inference_mode()
    def run(feeds: dict[str, np.ndarray]) -> object:
        return model(**{name: torch.from_numpy(array) for name, array in feeds.items()})

    return run, logits, size, parameters, names


def replay_dev_set(
    run: Runner, names: list[str], encodings: list[dict[str, list[int]]], batch: int
) -> dict[str, float]:
    """Time predicting the whole dev set, ``batch`` sentences of similar length per call (as ``distill predict``
    and :class:`distill.runtime.OnnxClassifier` group them), the sorting included in the time."""
    started = time.perf_counter()
    for indices in length_sorted_batches([len(row["input_ids"]) for row in encodings], batch):
        run(padded_feeds([encodings[i] for i in indices], names))
    seconds = time.perf_counter() - started
    return {"sentences": len(encodings), "seconds": seconds, "sentences_per_s": len(encodings) / seconds}


def _runner_with_threads(artifact: Artifact, run: Runner, threads: int) -> Runner:
    """``run`` at another intra-op thread count (a new session for ONNX Runtime, a global setting for torch)."""
    if artifact.runtime == "pytorch":
        torch.set_num_threads(threads)
        return run
    session = create_session(artifact.path, threads)
    return lambda feeds: session.run(None, feeds)


def time_point(run: Runner, feeds: dict[str, np.ndarray], cfg: BenchConfig) -> dict[str, float | int]:
    """Warm up, then time ``run`` until ``cfg.iterations`` or ``cfg.max_seconds_per_point`` (never fewer than 5)."""
    for _ in range(cfg.warmup):
        run(feeds)
    seconds: list[float] = []
    started = time.perf_counter()
    minimum = min(MIN_TIMED_ITERATIONS, cfg.iterations)
    while len(seconds) < cfg.iterations:
        tick = time.perf_counter()
        run(feeds)
        seconds.append(time.perf_counter() - tick)
        if len(seconds) >= minimum and time.perf_counter() - started >= cfg.max_seconds_per_point:
            break
    milliseconds = np.array(seconds) * 1000.0
    p50, p90, p99 = np.percentile(milliseconds, [50, 90, 99])
    mean = float(milliseconds.mean())
    batch = next(iter(feeds.values())).shape[0]
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "throughput_per_s": batch / (mean / 1000.0),
        "iterations": len(seconds),
    }


def _side_by_side(
    runners: dict[str, tuple[Runner, list[str]]],
    identities: dict[str, dict[str, str]],
    token_pool: np.ndarray,
    seq: int,
    threads: int,
    cfg: BenchConfig,
) -> list[dict[str, Any]]:
    """Every artifact at batch 1 and ``seq``, timed in turns round after round (:func:`interleaved_p50`)."""
    feeds = latency_inputs(token_pool, 1, seq, seed=seq)
    click.echo(f"[bench] timing all {len(runners)} artifact(s) side by side at batch 1, sequence {seq}")
    timed = interleaved_p50(runners, feeds, cfg.warmup, cfg.side_by_side_iterations)
    return [
        {
            **identities[label],
            "batch": 1,
            "seq": seq,
            "threads": threads,
            "p50_ms": p50,
            "iterations": cfg.side_by_side_iterations,
        }
        for label, p50 in timed.items()
    ]


def benchmark_artifacts(
    artifacts: list[Artifact],
    validation: datasets.Dataset,
    metric_names: list[str],
    teacher_name: str,
    cfg: BenchConfig,
    out_path: Path,
    is_regression: bool = False,
) -> dict[str, Any]:
    """Measure every artifact's dev metrics, agreement with the teacher, size and latency; write ``out_path``.

    Args:
        artifacts: the models to measure; one must be the teacher's PyTorch model, named ``teacher_name``.
        validation: the tokenised dev split (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``).
        metric_names: the task's metrics, main metric first.
        cfg: the latency grid (``batch_sizes`` x ``seq_lengths``), threads, warm-up and iteration budget.
        out_path: where the results JSON goes (``bench/results.json``).
        is_regression: agreement becomes the Pearson correlation of the two models' scores.

    Returns:
        ``{"host", "versions", "protocol", "metric_names", "teacher", "artifacts": [...], "latency": [...]}``,
        also written to ``out_path``.
    """
    teacher = _check_artifacts(artifacts, teacher_name, cfg)
    threads = cfg.threads or available_cores()
    load_before = other_cpu_load()
    labels = np.asarray(validation["labels"])
    encodings = validation.select_columns([c for c in MODEL_INPUTS if c in validation.column_names]).to_list()
    token_pool = np.concatenate([np.asarray(ids) for ids in validation["input_ids"]])
    ordered = [teacher] + [artifact for artifact in artifacts if artifact is not teacher]
    teacher_predictions: np.ndarray | None = None
    artifact_rows: list[dict[str, Any]] = []
    latency_rows: list[dict[str, Any]] = []
    replay_rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    side_rows: list[dict[str, Any]] = []
    runners: dict[str, tuple[Runner, list[str]]] = {}  # by artifact label, for the side-by-side timing
    identities: dict[str, dict[str, str]] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    progress = tqdm(total=len(ordered) * len(cfg.batch_sizes) * len(cfg.seq_lengths), desc="benchmarking")
    try:
        for artifact in ordered:
            run, logits, size, parameters, names = _load(artifact, validation, threads)
            predictions = predictions_from_logits(logits)
            if teacher_predictions is None:
                teacher_predictions = predictions
            artifact_rows.append(
                {
                    **{key: value for key, value in asdict(artifact).items() if key != "padding_atol"},
                    "path": str(artifact.path),
                    "size_bytes": size,
                    "parameters": parameters,
                    "metrics": compute_metrics(metric_names, predictions, labels),
                    "agreement_with_teacher": agreement(predictions, teacher_predictions, is_regression),
                    "padding_check": padding_check(run, names, encodings, atol=artifact.padding_atol),
                }
            )
            identity = {
                "name": artifact.name,
                "role": artifact.role,
                "runtime": artifact.runtime,
                "precision": artifact.precision,
            }
            label = "/".join(identity.values())
            runners[label], identities[label] = (run, names), identity
            for batch in cfg.batch_sizes:
                for seq in cfg.seq_lengths:
                    progress.set_postfix_str(f"{artifact.name}/{artifact.runtime} b{batch} s{seq}")
                    feeds = latency_inputs(token_pool, batch, seq, seed=batch * 100_003 + seq)
                    timing = time_point(run, {name: feeds[name] for name in names}, cfg)
                    latency_rows.append({**identity, "batch": batch, "seq": seq, "threads": threads, **timing})
                    progress.update()
            for batch in cfg.replay_batch_sizes:
                replay_rows.append(
                    {**identity, "batch": batch, "threads": threads, **replay_dev_set(run, names, encodings, batch)}
                )
            if cfg.thread_sweep:
                seq = max(cfg.seq_lengths)
                feeds = latency_inputs(token_pool, 1, seq, seed=seq)
                for count in range(1, available_cores() + 1):
                    swept = _runner_with_threads(artifact, run, count)
                    timing = time_point(swept, {name: feeds[name] for name in names}, cfg)
                    sweep_rows.append({**identity, "batch": 1, "seq": seq, "threads": count, **timing})
                torch.set_num_threads(threads)
        if cfg.side_by_side_iterations:
            side_rows = _side_by_side(runners, identities, token_pool, max(cfg.seq_lengths), threads, cfg)
    finally:
        progress.close()
        torch.set_num_threads(previous_threads)
    results = {
        "host": {**host_info(), "other_cpu_load_before": load_before},
        "versions": library_versions(),
        "protocol": {**cfg.model_dump(mode="json"), "threads": threads, "threads_requested": cfg.threads},
        "metric_names": list(metric_names),
        "teacher": teacher_name,
        "is_regression": is_regression,
        "artifacts": artifact_rows,
        "latency": latency_rows,
        "replay": replay_rows,
        "thread_sweep": sweep_rows,
        "side_by_side": side_rows,
    }
    write_json(Path(out_path), results)
    return results


def plan(cfg: BenchConfig) -> str:
    """What the bench stage is about to measure, in one line."""
    threads = cfg.threads or available_cores()
    return (
        f"timing every artifact at batch sizes {cfg.batch_sizes} x sequence lengths {cfg.seq_lengths} "
        f"on {threads} thread(s), then scoring each on the dev split"
    )


def bench_models(config: Config, data: TaskData, layout: RunLayout, names: list[str]) -> tuple[dict[str, Any], str]:
    """Benchmark the PyTorch model and every ONNX file of each of ``names`` into ``layout.results``.

    Returns the manifest summary and one line naming the fastest distilled student file against the teacher.
    """
    artifacts = []
    for name in names:
        role: Literal["teacher", "student"] = "teacher" if name == TEACHER else "student"
        artifacts.append(Artifact(name, "pytorch", "fp32", layout.model(name), role))
        bundle = layout.bundle(name)
        for file_name, precision in reversed(MODEL_FILES.items()):  # fp32 first, then faster variants
            if (bundle / file_name).is_file():
                tolerance = config.export.int8.max_score_change if precision == "int8" else 1e-3
                artifacts.append(Artifact(name, "onnxruntime", precision, bundle / file_name, role, None, tolerance))
        if (bundle / OVER_BUDGET_INT8_FILE).is_file():
            int8 = Fidelity.load(layout.fidelity(name)).int8
            note = int8.over_budget.note if int8 and int8.over_budget else "over budget"
            path, tolerance = bundle / OVER_BUDGET_INT8_FILE, config.export.int8.max_score_change
            artifacts.append(Artifact(name, "onnxruntime", "int8-over-budget", path, role, note, tolerance))
    tokenizer = AutoTokenizer.from_pretrained(layout.teacher)
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    raw = benchmark_artifacts(
        artifacts, validation, data.metrics, TEACHER, config.bench, layout.results, is_regression=data.is_regression
    )
    results = BenchResults.model_validate(raw)
    return {"results": str(layout.results.relative_to(layout.root))}, _fastest_line(results)


def _fastest_line(results: BenchResults) -> str:
    """The stage's closing line: the fastest distilled student file against the teacher in PyTorch, side by side
    when that timing ran (else at the grid's single-request point)."""
    side = results.side_by_side
    point = (side[0].batch, side[0].seq) if side else results.single_request_point()

    def p50(row: ArtifactRow) -> float | None:
        return results.side_by_side_p50(row) if side else results.p50(row, *point) if point else None

    teacher = results.teacher_row()
    reference = p50(teacher)
    timed = [(p50(row), row) for row in results.artifacts if row.role == "student"]
    timed = [(latency, row) for latency, row in timed if latency]
    distilled = [(latency, row) for latency, row in timed if not row.name.endswith(TWIN_SUFFIX)]
    timed = distilled or timed  # a label-only twin is a control, named only when it is all there is
    if not timed or not reference or not point:
        return f"{len(results.artifacts)} artifact(s) measured"
    fastest, row = min(timed, key=lambda item: item[0])
    how = " (side by side)" if side else ""
    return (
        f"{len(results.artifacts)} artifact(s) measured; fastest student file {row.label}: {reference / fastest:.2f}x "
        f"the teacher's PyTorch speed at batch {point[0]}, sequence {point[1]}{how}, dev {results.metric} "
        f"{row.metrics[results.metric]:.4f} vs {teacher.metrics[results.metric]:.4f}"
    )
