"""ONNX export of a fine-tuned classifier, verified against PyTorch at several shapes and on the whole dev split."""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import onnx
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from distill.config import ExportConfig
from distill.errors import ExportError
from distill.evaluate import MODEL_INPUTS, predict_logits
from distill.files import atomic_dir, write_json
from distill.layout import DEV_LOGITS_FILE, FIDELITY_FILE
from distill.metrics import agreement, predictions_from_logits
from distill.runtime import ONNX_FILE, create_session, onnx_logits

# The shape traced at export time; any shape works afterwards thanks to the dynamic axes.
TRACE_BATCH, TRACE_SEQ = 2, 16


def input_names(model: PreTrainedModel) -> list[str]:
    """The graph inputs: ``token_type_ids`` only for models that have segment embeddings."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) > 0:
        names.append("token_type_ids")
    return names


def random_inputs(model: PreTrainedModel, names: list[str], batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids with random right-padding (the first row is always full length).

    Returns:
        ``{name: (batch, seq) int64 tensor}`` for each name in ``names``.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=generator)
    lengths[0] = seq
    attention_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # (batch, seq)
    inputs = {
        "input_ids": torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator),
        "attention_mask": attention_mask,
        "token_type_ids": torch.randint(
            0, max(getattr(model.config, "type_vocab_size", 1), 1), (batch, seq), generator=generator
        )
        * attention_mask,
    }
    return {name: inputs[name] for name in names}


def load_model(model_dir: Path) -> PreTrainedModel:
    """The classifier in float32, eval mode, with eager attention (the only kind ORT's optimiser fuses)."""
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, attn_implementation="eager", dtype=torch.float32, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise ExportError(
            f"cannot load a sequence-classification model from {model_dir} ({str(err).splitlines()[0]}); "
            "point at a directory written by the teacher or train stage"
        ) from err
    return model.eval()


def trace_to_onnx(model: PreTrainedModel, path: Path, names: list[str], opset: int) -> None:
    """Write ``model`` as ONNX with dynamic batch and sequence axes, through the TorchScript exporter."""
    dynamic_axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic_axes["logits"] = {0: "batch"}
    example = random_inputs(model, names, TRACE_BATCH, TRACE_SEQ, seed=0)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # The legacy exporter warns about deprecation and traced Python values; the checks that follow
            # are what tell whether the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (),
                str(path),
                kwargs=example,
                input_names=names,
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as err:  # the exporter raises many types; all mean "this model did not export"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"torch.onnx.export failed at opset {opset} ({first_line}); try another export.opset "
            "or check that the model is a standard *ForSequenceClassification architecture"
        ) from err


def _pytorch_logits(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return model(**inputs).logits.float().numpy()


def check_shapes(model: PreTrainedModel, session: Any, names: list[str], cfg: ExportConfig) -> list[dict[str, Any]]:
    """Max |PyTorch - ONNX| logit difference at every ``cfg.check_shapes`` (batch, seq); raises past ``cfg.atol``."""
    checks = []
    limit = getattr(model.config, "max_position_embeddings", None)
    for index, (batch, seq) in enumerate(cfg.check_shapes):
        if limit is not None and seq > limit:
            raise ExportError(
                f"export.check_shapes asks for seq {seq} but the model takes at most {limit} tokens; "
                "use shorter check shapes"
            )
        inputs = random_inputs(model, names, batch, seq, seed=index + 1)
        encodings = [{name: tensor[row].tolist() for name, tensor in inputs.items()} for row in range(batch)]
        diff = float(np.abs(_pytorch_logits(model, inputs) - onnx_logits(session, encodings)).max())
        checks.append({"batch": batch, "seq": seq, "max_abs_diff": diff})
        if not diff <= cfg.atol:
            raise ExportError(
                f"ONNX logits differ from PyTorch by {diff:.3g} at shape (batch={batch}, seq={seq}), more than "
                f"export.atol={cfg.atol:g}; raise export.atol or try another export.opset"
            )
    return checks


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each op type the graph has (most frequent first)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(node.op_type for node in graph.node).most_common())


def dev_fidelity(
    pytorch: np.ndarray, onnx_dev: np.ndarray, regression: bool, teacher_logits: np.ndarray | None
) -> dict[str, Any]:
    """Logit difference and prediction agreement on the dev split; all arrays are ``(n, num_labels)``.

    Prediction flips and agreement are ``None`` for regression, where only the logit difference is meaningful.
    """
    onnx_predictions = predictions_from_logits(onnx_dev)
    flips = 0 if regression else int((predictions_from_logits(pytorch) != onnx_predictions).sum())
    result: dict[str, Any] = {
        "dev_examples": len(onnx_dev),
        "max_abs_diff": float(np.abs(pytorch - onnx_dev).max()) if len(onnx_dev) else 0.0,
        "mean_abs_diff": float(np.abs(pytorch - onnx_dev).mean()) if len(onnx_dev) else 0.0,
        "prediction_flips": None if regression else flips,
        "flip_rate": None if regression else flips / max(len(onnx_dev), 1),
        "agreement_with_pytorch": None if regression else 1.0 - flips / max(len(onnx_dev), 1),
        "agreement_with_teacher": None,
    }
    if teacher_logits is not None:
        teacher_predictions = predictions_from_logits(teacher_logits)
        result["agreement_with_teacher"] = agreement(onnx_predictions, teacher_predictions, regression)
    return result


def export_onnx(
    model_dir: Path,
    out_dir: Path,
    cfg: ExportConfig,
    validation: datasets.Dataset,
    teacher_logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """Export ``model_dir`` to an ONNX bundle in ``out_dir`` and prove it matches PyTorch.

    Args:
        model_dir: a ``save_pretrained`` directory of a ``*ForSequenceClassification`` model and its tokenizer.
        out_dir: the bundle to write (replaced only when every check passes): ``model.onnx``, tokenizer files,
            ``config.json``, ``fidelity.json`` and ``dev_logits.npy`` (the ONNX dev logits, ``(n, num_labels)``).
        cfg: opset, tolerance and the (batch, seq) shapes checked with random inputs.
        validation: the tokenised dev split (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``).
        teacher_logits: the teacher's ``(n, num_labels)`` dev logits, to record agreement with the teacher.

    Returns:
        The fidelity record also written to ``fidelity.json``.

    Raises:
        ExportError: the export fails, or the logits differ by more than ``cfg.atol`` at a check shape or on
            the dev split, or a dev prediction flips.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = input_names(model)
    regression = model.config.num_labels == 1
    expected_shape = (len(validation), model.config.num_labels)
    if teacher_logits is not None and teacher_logits.shape != expected_shape:
        raise ExportError(
            f"teacher logits have shape {teacher_logits.shape} but the dev split and model need {expected_shape}; "
            "pass the teacher's logits on the same validation split"
        )
    with atomic_dir(out_dir) as staging:
        onnx_path = staging / ONNX_FILE
        trace_to_onnx(model, onnx_path, names, cfg.opset)
        session = create_session(onnx_path, threads=None)
        shape_checks = check_shapes(model, session, names, cfg)

        pytorch_dev = predict_logits(model, validation, tokenizer, desc="PyTorch dev logits")
        columns = [name for name in MODEL_INPUTS if name in validation.column_names]
        onnx_dev = onnx_logits(session, validation.select_columns(columns).to_list())
        dev = dev_fidelity(pytorch_dev, onnx_dev, regression, teacher_logits)
        if not dev["max_abs_diff"] <= cfg.atol:
            raise ExportError(
                f"ONNX logits differ from PyTorch by {dev['max_abs_diff']:.3g} on the dev split, more than "
                f"export.atol={cfg.atol:g}; raise export.atol or try another export.opset"
            )
        if dev["prediction_flips"]:
            raise ExportError(
                f"{dev['prediction_flips']} of {dev['dev_examples']} dev predictions differ between ONNX and PyTorch; "
                "the exported graph cannot be trusted, try another export.opset"
            )

        tokenizer.save_pretrained(staging)
        shutil.copy2(model_dir / "config.json", staging / "config.json")
        np.save(staging / DEV_LOGITS_FILE, onnx_dev)
        fidelity = {
            "source": str(model_dir),
            "onnx_file": ONNX_FILE,
            "opset": cfg.opset,
            "inputs": names,
            "size_bytes": onnx_path.stat().st_size,
            "atol": cfg.atol,
            "check_shapes": shape_checks,
            **dev,
            "op_counts": op_counts(onnx_path),
        }
        write_json(staging / FIDELITY_FILE, fidelity)
    return fidelity
