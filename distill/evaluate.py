"""Run a PyTorch classifier over a tokenised split in length-sorted batches, and score its predictions."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from distill.metrics import compute_metrics, predictions_from_logits
from distill.runtime import length_sorted_batches

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.inference_mode()
def predict_logits(
    model: PreTrainedModel,
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 64,
    desc: str | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """Logits of ``model`` on every row of a tokenised ``dataset``, in the dataset's order; under bf16 autocast
    when ``bf16`` (the caller decides that the device supports it: :func:`distill.train.resolve_precision`).

    Returns:
        ``(n, num_labels)`` float32 array.
    """
    model.eval()
    device = next(model.parameters()).device
    collator = DataCollatorWithPadding(tokenizer)
    columns = [c for c in MODEL_INPUTS if c in dataset.column_names]
    rows = dataset.select_columns(columns)
    lengths = [len(ids) for ids in rows["input_ids"]]
    logits = np.zeros((len(rows), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(lengths, batch_size)
    for indices in tqdm(batches, desc=desc or "predicting", leave=False, disable=desc is None):
        batch = collator([rows[i] for i in indices])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits[indices] = model(**batch).logits.float().cpu().numpy()
    return logits


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, metric_names: list[str]) -> dict[str, float]:
    """Metrics of logits against gold labels."""
    return compute_metrics(metric_names, predictions_from_logits(logits), np.asarray(labels))
