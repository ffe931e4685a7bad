"""ONNX Runtime inference over an exported bundle (model.onnx, tokenizer.json, config.json), with no torch import."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from distill.errors import ExportError

ORT_INTEGER_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
ONNX_FILE, OPTIMIZED_FILE, INT8_FILE = "model.onnx", "model.opt.onnx", "model.int8.onnx"
MODEL_FILES = {INT8_FILE: "int8", OPTIMIZED_FILE: "fp32-opt", ONNX_FILE: "fp32"}
"""A bundle's ONNX files and the precision each is benchmarked as, fastest first; the export stage writes only
those that passed their fidelity budget."""
PREFERRED_MODEL_FILES = tuple(MODEL_FILES)
OVER_BUDGET_INT8_FILE = "model.int8.over-budget.onnx"
"""The fastest INT8 graph of a bundle whose INT8 candidates all broke the fidelity budget (written for the teacher):
benchmarked as precision ``int8-over-budget`` so the report shows what quantising alone would give; never served."""
# tokenizer_config.json stores a huge sentinel when the model has no length limit.
NO_LENGTH_LIMIT = 1_000_000
TEXT_PAIR_KEY = "distill_text_pair"
"""Key distill adds to a bundle's ``config.json``: whether the model reads sentence pairs."""
DISABLED_OPTIMIZERS_KEY = "distill_disabled_optimizers"
"""Key distill adds to a bundle's ``config.json``: the ONNX Runtime graph optimisers its sessions switch off, because
the export stage measured the bundle's graphs faster without them (:func:`distill.fusion.fuse_bundle`)."""


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so that padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def bundle_disabled_optimizers(bundle_dir: Path | str) -> tuple[str, ...]:
    """The ONNX Runtime optimisers a bundle's ``config.json`` says to switch off (none when it says nothing)."""
    path = Path(bundle_dir) / "config.json"
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get(DISABLED_OPTIMIZERS_KEY, [])
    except (OSError, ValueError, AttributeError):  # no bundle beside the graph (a scratch file), or not a dict
        return ()
    return tuple(str(name) for name in names)


def create_session(
    model_path: Path | str, threads: int | None = None, disabled_optimizers: Sequence[str] | None = None
) -> ort.InferenceSession:
    """A CPU session with a reproducible threading setup.

    Args:
        model_path: the ``.onnx`` file.
        threads: intra-op threads; ``None`` lets ONNX Runtime pick. Inter-op parallelism is off (one thread,
            sequential execution) so that latency numbers depend on ``threads`` alone.
        disabled_optimizers: ONNX Runtime graph optimisers to switch off; ``None``: those the bundle beside
            ``model_path`` records (:data:`DISABLED_OPTIMIZERS_KEY`), so every file of a bundle runs as it was timed.
    """
    model_path = Path(model_path)
    if disabled_optimizers is None:
        disabled_optimizers = bundle_disabled_optimizers(model_path.parent)
    if not model_path.is_file():
        raise ExportError(f"ONNX model {model_path} does not exist; run `distill export` first or fix the path")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
        return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"], **extra)
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for unreadable graphs
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ExportError(
            f"ONNX model {model_path} cannot be loaded ({first}); it may be truncated or damaged: rerun "
            "`distill export` (or copy the bundle again)"
        ) from None


def padded_feeds(
    rows: Sequence[dict[str, list[int]]], inputs: dict[str, type] | Sequence[str], pad_id: int = 0
) -> dict[str, np.ndarray]:
    """One batch of tokenised rows, right-padded to the longest row.

    Args:
        rows: unpadded ``input_ids`` and optionally ``attention_mask`` / ``token_type_ids`` per example.
        inputs: the input names to build, or a name-to-integer-dtype map (default ``int64``).
    Returns:
        ``{name: (batch, longest) array}``; padding is ``pad_id`` in ``input_ids`` and 0 elsewhere, and a missing
        ``attention_mask`` is 1 over each row's real tokens.
    """
    dtypes = dict(inputs) if isinstance(inputs, dict) else dict.fromkeys(inputs, np.int64)
    width = max(len(row["input_ids"]) for row in rows)
    feeds = {name: np.zeros((len(rows), width), dtype=dtype) for name, dtype in dtypes.items()}
    if "input_ids" in feeds:
        feeds["input_ids"].fill(pad_id)
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        for name, array in feeds.items():
            values = row.get(name)
            if values is not None:
                array[index, :length] = values
            elif name == "attention_mask":
                array[index, :length] = 1
    return feeds


def onnx_logits(
    session: ort.InferenceSession, encodings: Sequence[dict[str, list[int]]], batch_size: int = 64, pad_id: int = 0
) -> np.ndarray:
    """Logits for already-tokenised examples, in their original order.

    Args:
        session: a session over a classifier graph whose first output (or the one named ``logits``) is
            ``(batch, num_labels)``.
        encodings: one dict per example with ``input_ids`` and optionally ``attention_mask`` and
            ``token_type_ids`` (unpadded lists). Each length-sorted batch is right-padded here with ``pad_id``.

    Returns:
        ``(n, num_labels)`` float32 array.
    """
    inputs = {node.name: ORT_INTEGER_TYPES.get(node.type, np.int64) for node in session.get_inputs()}
    output_names = [node.name for node in session.get_outputs()]
    output = "logits" if "logits" in output_names else output_names[0]
    lengths = [len(encoding["input_ids"]) for encoding in encodings]
    declared_labels = session.get_outputs()[output_names.index(output)].shape[-1]
    all_logits: np.ndarray | None = None
    for indices in length_sorted_batches(lengths, batch_size):
        feeds = padded_feeds([encodings[i] for i in indices], inputs, pad_id)
        logits = session.run([output], feeds)[0]  # (batch, num_labels)
        if all_logits is None:
            all_logits = np.zeros((len(encodings), logits.shape[1]), np.float32)
        all_logits[indices] = logits
    if all_logits is None:  # no examples
        return np.zeros((0, declared_labels if isinstance(declared_labels, int) else 0), np.float32)
    return all_logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def best_model_file(bundle_dir: Path) -> str:
    """The fastest ONNX file present in a bundle."""
    for name in PREFERRED_MODEL_FILES:
        if (bundle_dir / name).is_file():
            return name
    raise ExportError(f"bundle {bundle_dir} holds no ONNX model; point at a directory written by `distill export`")


class OnnxClassifier:
    """Text classification with an exported bundle: ``OnnxClassifier("run/onnx/distil3").predict(["great film"])``.

    Args:
        bundle_dir: directory holding the ONNX file, ``tokenizer.json`` and ``config.json`` (for ``id2label``).
        model_file: which ONNX file of the bundle to load.
        threads: intra-op threads for ONNX Runtime (``None``: its default).
        batch_size: examples per ``session.run`` call.
        max_length: truncate inputs to this many tokens (a run's ``data.max_length``); ``None``: the model's limit.
    """

    def __init__(
        self,
        bundle_dir: Path | str,
        model_file: str | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> None:
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise ExportError(f"bundle {bundle_dir} does not exist; pass a directory written by `distill export`")
        model_file = model_file or best_model_file(bundle_dir)
        for name in ("tokenizer.json", "config.json"):
            if not (bundle_dir / name).is_file():
                raise ExportError(
                    f"bundle {bundle_dir} has no {name}; point at a directory written by `distill export`"
                )
        self.session = create_session(bundle_dir / model_file, threads)
        self.batch_size = batch_size
        config = json.loads((bundle_dir / "config.json").read_text(encoding="utf-8"))
        self.id2label = {int(i): label for i, label in config.get("id2label", {}).items()}
        self.text_pair: bool | None = config.get(TEXT_PAIR_KEY)
        """Whether the model reads sentence pairs (None for bundles from before distill recorded it)."""
        self.tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        limit = self._max_length(bundle_dir, config)
        self.tokenizer.enable_truncation(min(limit, max_length) if max_length else limit)

    @staticmethod
    def _max_length(bundle_dir: Path, config: dict) -> int:
        """The tokenizer's ``model_max_length`` when it is real, else the model's position limit."""
        limit = int(config.get("max_position_embeddings", 512))
        tokenizer_config = bundle_dir / "tokenizer_config.json"
        if tokenizer_config.is_file():
            declared = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("model_max_length")
            if isinstance(declared, (int, float)) and 0 < declared < NO_LENGTH_LIMIT:
                limit = min(limit, int(declared))
        return limit

    def label(self, class_id: int) -> str:
        """The name of a class id; ``LABEL_<id>`` (as transformers names them) when config.json has none."""
        return self.id2label.get(class_id, f"LABEL_{class_id}")

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[dict[str, float | str]]:
        """One ``{"label", "score"}`` per text: the arg-max label and its softmax probability; for a regression model
        (one output), ``{"score"}``: the predicted value.

        Raises:
            ValueError: an empty text, second texts for a single-text model or none for a pair model.
        """
        logits = self.logits(texts, text_pairs)  # (n, num_labels)
        if logits.shape[1] == 1:
            return [{"score": float(value)} for value in logits[:, 0]]  # regression: a score, no label
        probabilities = _softmax(logits)
        best = probabilities.argmax(axis=-1)
        return [{"label": self.label(int(k)), "score": float(probabilities[row, k])} for row, k in enumerate(best)]

    def logits(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> np.ndarray:
        """The model's ``(n, num_labels)`` logits (``(n, 1)`` scores for regression) for ``texts`` and their pairs.

        Raises:
            ValueError: as :meth:`predict`.
        """
        if isinstance(texts, str):
            texts = [texts]
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(text_pairs)} text pairs; pass one pair per text")
        if self.text_pair is True and text_pairs is None:
            raise ValueError(
                "this model classifies sentence pairs; give the second text of each pair (--pair on the command "
                "line, text_pairs in Python)"
            )
        if self.text_pair is False and text_pairs is not None:
            raise ValueError("this model classifies single texts, not pairs; leave out --pair (text_pairs in Python)")
        if any(not text.strip() for text in [*texts, *(text_pairs or [])]):
            raise ValueError("an empty text has nothing to classify; pass at least one word per text")
        batch = list(texts) if text_pairs is None else list(zip(texts, text_pairs, strict=True))
        encodings = [
            {"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
            for e in self.tokenizer.encode_batch(batch)
        ]
        return onnx_logits(self.session, encodings, self.batch_size)
