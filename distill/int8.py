"""INT8 candidates of an fp32 ONNX graph: what each quantises and how it is built with ONNX Runtime's quantiser.

A candidate (:class:`Int8Spec`) names its fp32 source (the plain or the fused graph), dynamic or static (QDQ,
activation scales calibrated on training rows, weights per channel, activations per tensor) quantisation, whether the
embedding tables are quantised too, and the nodes kept in fp32. :func:`candidate_specs` lists those the config asks
for; :class:`PreparedGraph` quantises one source any number of times (the sensitivity search builds many).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from distill.config import Int8Config

WEIGHT_OPS = ("MatMul", "Attention", "Gemm")
"""Op types quantised in every candidate (MatMul only with a constant weight)."""
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")
"""Op types quantised too when a candidate quantises the embedding tables: ``Gather`` over a table in the plain
graph, ORT's fused ``EmbedLayerNormalization`` (to ``QEmbedLayerNormalization``) in the optimised one."""
EMBEDDING_TABLE_INPUT = {"Gather": 0, "EmbedLayerNormalization": 2}
"""Which input of each embedding op is the (word) embedding table."""


@dataclass(frozen=True)
class Int8Spec:
    """One INT8 candidate.

    Attributes:
        label: how fidelity.json and the report name it.
        source: the fp32 graph it quantises (``model.onnx`` or ``model.opt.onnx``).
        static: QDQ with calibrated activation scales; otherwise dynamic (activation scales computed per batch).
        per_channel: weights quantised per output channel rather than per tensor.
        embeddings: the embedding tables (``Gather``, or the fused ``EmbedLayerNormalization``) quantised too.
        exclude_nodes: names of nodes kept in fp32.
        qat: quantises the student after quantisation-aware fine-tuning (:mod:`distill.qat`): other weights than
            the fp32 graph's, so it is judged against the teacher rather than by flips.
    """

    label: str
    source: Path
    static: bool
    per_channel: bool
    embeddings: bool = False
    exclude_nodes: tuple[str, ...] = ()
    qat: bool = False

    def op_types(self, cfg: Int8Config) -> list[str]:
        ops = [*WEIGHT_OPS, *(EMBEDDING_OPS if self.embeddings else ())]
        return [op for op in ops if op not in cfg.exclude_op_types]


def _graphs(plain: Path, fused: Path | None) -> list[tuple[Path, str]]:
    """The fp32 graphs a candidate may quantise, fused first: ``(path, "fused" | "plain")`` for each that exists."""
    return [(source, where) for source, where in ((fused, "fused"), (plain, "plain")) if source is not None]


def candidate_specs(cfg: Int8Config, plain: Path, fused: Path | None) -> list[Int8Spec]:
    """Every candidate ``cfg`` asks for, from the fused graph when there is one and from the plain graph.

    Static candidates start from the plain graph: QDQ pairs are fused by the session itself. Embedding-quantised
    candidates come from both graphs: the fused graph's ``EmbedLayerNormalization`` becomes ORT's
    ``QEmbedLayerNormalization``, which also holds its layer-norm weights in INT8, so it is measured on its own.
    """
    specs: list[Int8Spec] = []
    channel_options = [False, True] if cfg.per_channel is None else [cfg.per_channel]
    if cfg.mode in ("all", "dynamic"):
        for source, where in _graphs(plain, fused):
            for per_channel in channel_options:
                weights = "per-channel" if per_channel else "per-tensor"
                specs.append(Int8Spec(f"dynamic {weights} ({where})", source, False, per_channel))
        if cfg.quantize_embeddings:
            per_channel = channel_options[-1]
            weights = "per-channel" if per_channel else "per-tensor"
            for source, where in _graphs(plain, fused):
                label = f"dynamic {weights} + embeddings ({where})"
                specs.append(Int8Spec(label, source, False, per_channel, embeddings=True))
    if cfg.mode in ("all", "static"):
        per_channel = cfg.per_channel is not False
        weights = "per-channel" if per_channel else "per-tensor"
        specs.append(Int8Spec(f"static QDQ {weights} (plain)", plain, True, per_channel))
    return specs


def qat_specs(cfg: Int8Config, plain: Path, fused: Path | None) -> list[Int8Spec]:
    """The candidates of a quantisation-aware fine-tuned student: weights per channel (the grid it trained on),
    dynamic from its fused and plain graphs, its embeddings quantised too, and static QDQ, as ``cfg.mode`` allows."""
    specs: list[Int8Spec] = []
    if cfg.mode in ("all", "dynamic"):
        for source, where in _graphs(plain, fused):
            specs.append(Int8Spec(f"QAT dynamic per-channel ({where})", source, False, True, qat=True))
        if cfg.quantize_embeddings:
            for source, where in _graphs(plain, fused):
                label = f"QAT dynamic per-channel + embeddings ({where})"
                specs.append(Int8Spec(label, source, False, True, True, qat=True))
    if cfg.mode in ("all", "static"):
        specs.append(Int8Spec("QAT static QDQ per-channel (plain)", plain, True, True, qat=True))
    return specs


class CalibrationReader:
    """Feeds tokenised training rows one at a time to ``quantize_static`` (the graph has dynamic axes)."""

    def __init__(self, encodings: Sequence[dict[str, list[int]]], input_names: Sequence[str]) -> None:
        self.feeds = [
            {name: np.asarray([row[name]], dtype=np.int64) for name in input_names if name in row} for row in encodings
        ]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def __len__(self) -> int:
        return len(self.feeds)


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _layer_of(node: onnx.NodeProto, attention_index: int, num_layers: int) -> tuple[int, int]:
    """``(layer, next attention index)``: from the exporter's scope name (``.../layer.3/...``); fused ``Attention``
    nodes, which lose their scope, in graph order; anything else after the encoder (``num_layers``)."""
    match = re.search(r"layer\.(\d+)", node.name)
    if match is not None:
        return int(match.group(1)), attention_index
    if node.op_type in ("Attention", "MultiHeadAttention"):
        return attention_index, attention_index + 1
    if node.op_type in EMBEDDING_OPS:
        return -1, attention_index
    return num_layers, attention_index


class PreparedGraph:
    """An fp32 source graph after ORT's quantisation pre-processing (shape inference), in a scratch directory.

    Use as a context manager; :meth:`quantize` writes any number of candidates from it.
    """

    def __init__(self, source: Path, cfg: Int8Config, calibration: Sequence[dict[str, list[int]]] = ()) -> None:
        source = Path(source).resolve()  # before the scratch directory becomes the working directory
        self.source, self.cfg, self.calibration = source, cfg, calibration
        self._scratch = tempfile.TemporaryDirectory(prefix="distill-int8-")
        self.directory = Path(self._scratch.name)
        self.path = self.directory / "prepared.onnx"
        from onnxruntime.quantization import quant_pre_process

        # When symbolic shape inference gives up it dumps its partial model into the current directory, so it runs
        # inside the scratch directory; ONNX's own shape inference suffices for such graphs.
        with _working_directory(self.directory):
            try:
                quant_pre_process(str(source), str(self.path), skip_optimization=True)
            except Exception:  # noqa: BLE001 - symbolic shape inference raises many types
                quant_pre_process(str(source), str(self.path), skip_optimization=True, skip_symbolic_shape=True)
        graph = onnx.load(str(self.path), load_external_data=False).graph
        self.nodes = list(graph.node)
        self.initializers = {tensor.name for tensor in graph.initializer}
        self.input_names = [value.name for value in graph.input]

    def __enter__(self) -> PreparedGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self._scratch.cleanup()

    def quantisable_nodes(self, spec: Int8Spec) -> list[str]:
        """Names of the nodes ``spec`` quantises (a ``MatMul`` or an embedding op only over a constant table), in
        order."""
        from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

        registry = QDQRegistry if spec.static else IntegerOpsRegistry  # dynamic INT8 has no Gemm, for example
        op_types = {op for op in spec.op_types(self.cfg) if op in registry}
        names = []
        for node in self.nodes:
            if node.op_type not in op_types:
                continue
            table = EMBEDDING_TABLE_INPUT.get(node.op_type, 1)
            constant = node.input[table] if len(node.input) > table else ""
            if node.op_type in ("MatMul", *EMBEDDING_OPS) and constant not in self.initializers:
                continue
            names.append(node.name)
        return names

    def layer_groups(self, names: Sequence[str], num_layers: int) -> list[list[str]]:
        """``names`` grouped by the layer they belong to: embeddings, each encoder layer, then the pooler and head."""
        wanted, groups, attention_index = set(names), {}, 0
        for node in self.nodes:
            layer, attention_index = _layer_of(node, attention_index, num_layers)
            if node.name in wanted:
                groups.setdefault(layer, []).append(node.name)
        return [groups[layer] for layer in sorted(groups)]

    def quantize(self, spec: Int8Spec, target: Path) -> None:
        """Write ``spec``'s INT8 graph to ``target``."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

        common = dict(
            per_channel=spec.per_channel,
            reduce_range=self.cfg.reduce_range,
            op_types_to_quantize=spec.op_types(self.cfg),
            nodes_to_exclude=list(spec.exclude_nodes),
        )
        if not spec.static:
            quantize_dynamic(str(self.path), str(target), weight_type=QuantType.QInt8, **common)
            return
        if not self.calibration:
            raise ValueError("static INT8 needs calibration rows, and none were given")
        cache = self.directory / f"calibration-{'-'.join(common['op_types_to_quantize'])}.json"  # ranges per op set
        cached = {}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cached = {"calibration_cache_path": str(cache)}  # calibrate once, then reuse for every exclusion set
        quantize_static(
            str(self.path),
            str(target),
            CalibrationReader(self.calibration, self.input_names),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "MatMulConstBOnly": True},
            **cached,
            **common,
        )
