"""The training loop: a ``transformers.Trainer`` whose only override of substance is ``compute_loss``.

Trainer provides resumable checkpoints, progress bars, evaluation each epoch, and data-parallel runs (DDP under
``distill run --processes N`` or torchrun: each rank reads its shard of every global batch, evaluation is gathered
across ranks, rank 0 alone saves); we add the distillation objective, per-term loss logging (JSONL and TensorBoard)
and best-checkpoint tracking.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from datasets import Dataset
from safetensors import SafetensorError, safe_open
from torch.utils.tensorboard import SummaryWriter
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.integrations import TensorBoardCallback
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from distill import distributed
from distill.config import TrainingConfig
from distill.files import atomic_dir, read_json, write_json
from distill.layout import CHECKPOINTS_DIR, TRAIN_LOG
from distill.losses import hard_label_loss
from distill.metrics import compute_metrics, predictions_from_logits

TEACHER_LOGITS = "teacher_logits"
"""Optional training-set column of precomputed teacher logits; used instead of running the teacher when the
objective needs nothing but logits from it."""


class DistillationTrainer(Trainer):
    """Trainer with a pluggable objective ``(student_out, teacher_out, labels, mask) -> (loss, terms)``.

    The teacher (if the objective needs one) runs in eval mode without gradients on the student's device.
    Evaluation uses the hard-label loss only, so dev loss is comparable across objectives.
    """

    def __init__(self, *args: Any, objective: Any, teacher: PreTrainedModel | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.args.device).eval()
            teacher.requires_grad_(False)
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_counts: dict[str, int] = defaultdict(int)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        if not model.training:
            inputs.pop(TEACHER_LOGITS, None)
            outputs = model(**inputs)
            loss = hard_label_loss(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss
        cached_logits = inputs.pop(TEACHER_LOGITS, None)
        wanted = {
            "output_hidden_states": self.objective.needs_hidden_states,
            "output_attentions": self.objective.needs_attentions,
        }
        student_outputs = model(**inputs, **wanted)
        teacher_outputs = None
        if self.objective.needs_teacher:
            if cached_logits is not None and not (wanted["output_hidden_states"] or wanted["output_attentions"]):
                teacher_outputs = SequenceClassifierOutput(logits=cached_logits.to(student_outputs.logits.dtype))
            else:
                assert self.teacher is not None, "this objective needs a teacher"
                with torch.no_grad():
                    teacher_outputs = self.teacher(**inputs, **wanted)
        loss, terms = self.objective(student_outputs, teacher_outputs, labels, inputs["attention_mask"])
        for name, value in terms.items():
            self._term_sums[name] += float(value)
            self._term_counts[name] += 1
        return (loss, student_outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_counts:
            for name, total in self._term_sums.items():
                logs[f"loss_{name}"] = round(total / self._term_counts[name], 6)
            self._term_sums.clear()
            self._term_counts.clear()
        super().log(logs, start_time)


class ReadableProgress(ProgressCallback):
    """The Trainer's progress bars, with one readable line per evaluation instead of every log record as a dict
    (the records themselves go to the JSONL log and TensorBoard)."""

    TIMINGS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and self.training_bar is not None and logs):
            return
        scores = {k[5:]: v for k, v in logs.items() if k.startswith("eval_") and k not in self.TIMINGS}
        if scores:
            text = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
            self.training_bar.write(f"epoch {state.epoch:g}: dev {text}")


class JsonlLogCallback(TrainerCallback):
    """Appends every log record (step, epoch, losses, eval metrics) to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class BestModelCallback(TrainerCallback):
    """Saves the model to ``best_dir`` whenever the dev metric improves; survives resumption via ``best.json``."""

    def __init__(self, best_dir: Path, metric_key: str) -> None:
        self.best_dir = best_dir
        self.metric_key = metric_key
        record = best_dir / "best.json"
        self.best = read_json(record) if record.is_file() else None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not state.is_world_process_zero or not metrics or self.metric_key not in metrics:
            return
        value = float(metrics[self.metric_key])
        if self.best is None or value > self.best["value"]:
            self.best = {"metric": self.metric_key, "value": value, "step": state.global_step, "epoch": state.epoch}
            with atomic_dir(self.best_dir) as tmp:
                model.save_pretrained(tmp)
                write_json(tmp / "best.json", self.best)


class EarlyStopping(TrainerCallback):
    """Stops training after ``patience`` evaluations in a row without a better ``metric_key`` than the best so far.

    The count comes from the Trainer's log history, which a resumed run restores, and which every rank holds alike
    (evaluation is gathered across ranks), so every rank stops at the same step.
    """

    def __init__(self, metric_key: str, patience: int) -> None:
        self.metric_key = metric_key
        self.patience = patience

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        scores = [float(entry[self.metric_key]) for entry in state.log_history if self.metric_key in entry]
        if not scores:
            return
        best = scores.index(max(scores))  # the first best, as BestModelCallback keeps it
        if len(scores) - 1 - best >= self.patience:
            control.should_training_stop = True
            if state.is_world_process_zero:
                click.echo(
                    f"early stop at step {state.global_step}: no better dev {self.metric_key[5:]} in "
                    f"{self.patience} evaluations (best {scores[best]:.4f})",
                    err=True,
                )


@dataclass
class TrainResult:
    """The best model (by the main dev metric; the last one when not selecting) and what happened on the way."""

    model: PreTrainedModel
    best: dict[str, Any]
    history: list[dict[str, Any]]
    resumed_from: str | None
    precision: str = "fp32"


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint that was completely written, removing any newer one that a kill (or a full disk) cut
    short, with one line naming them and where training resumes.

    Trainer writes ``trainer_state.json`` last, so a checkpoint without a readable one is incomplete; so is one whose
    ``model.safetensors`` is missing or truncated (distill resumes from safetensors weights only), or whose optimizer,
    scheduler or RNG state (torch's zip format, whose index is at the end of the file) is cut short.
    """
    import zipfile  # (here, not at the top: this function alone checks torch's state files)

    if not checkpoint_dir.is_dir():
        return None
    candidates = sorted(
        (path for path in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.name.rsplit("-", 1)[-1].isdigit()),
        key=lambda path: int(path.name.rsplit("-", 1)[-1]),
        reverse=True,
    )
    removed: list[str] = []

    def say(resume: str) -> None:
        if removed:
            names = ", ".join(removed)
            click.echo(
                f"note: {names} in {checkpoint_dir} {'is' if len(removed) == 1 else 'are'} incomplete or "
                f"{'its' if len(removed) == 1 else 'their'} weights do not load; removed, {resume}",
                err=True,
            )

    for path in candidates:
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            with safe_open(str(path / "model.safetensors"), framework="pt"):  # reads and checks the header and size
                pass
            for state in path.glob("*.pt*"):  # optimizer.pt, scheduler.pt, rng_state*.pth
                zipfile.ZipFile(state).close()
        except (OSError, ValueError, SafetensorError, zipfile.BadZipFile):
            removed.append(path.name)
            shutil.rmtree(path, ignore_errors=True)
            continue
        say(f"training resumes from {path.name}")
        return str(path)
    say("training starts from the beginning")
    return None


def _metrics_fn(metric_names: list[str]):
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return compute_metrics(metric_names, predictions_from_logits(logits), np.asarray(prediction.label_ids))

    return compute


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags under which bf16 autocast is faster than fp32 (without them it is emulated and slower)."""


def resolve_precision(requested: str) -> tuple[bool, str]:
    """Whether to train in bf16 autocast, and a sentence saying what was used and why.

    bf16 is used when asked for and supported: on a CUDA device that supports it, or on a CPU with AVX512-BF16
    or AMX-BF16; otherwise training falls back to fp32 and the sentence says so.
    """
    if requested != "bf16":
        return False, "fp32"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return True, f"bf16 autocast on {torch.cuda.get_device_name()}"
        return False, f"fp32: bf16 was requested but {torch.cuda.get_device_name()} does not support it"
    from distill.env import host_info

    flags = host_info()["cpu_flags"]
    present = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if present:
        return True, f"bf16 autocast on CPU ({', '.join(present)})"
    return False, (
        "fp32: bf16 was requested but this CPU has neither AVX512-BF16 nor AMX-BF16 "
        f"(flags: {', '.join(flags) or 'unknown'}), where bf16 would be emulated and slower"
    )


def train_model(
    model: PreTrainedModel,
    train_set: Dataset,
    validation_set: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    training: TrainingConfig,
    work_dir: Path,
    metric_names: list[str],
    seed: int,
    objective: Any,
    teacher: PreTrainedModel | None = None,
    select_best: bool = True,
) -> TrainResult:
    """Train ``model`` with ``objective``, evaluating each epoch (or every ``training.eval_steps`` steps), keeping the
    best checkpoint and stopping early after ``training.patience`` evaluations without a better one.

    Checkpoints go to ``work_dir/checkpoints`` (resumed from automatically when present; the caller removes
    them with :func:`remove_checkpoints` once it has saved the result);
    logs to ``work_dir/logs/train_log.jsonl`` and ``work_dir/logs/tensorboard``.

    Args:
        train_set / validation_set: tokenised splits (``input_ids``, ``attention_mask``, ``labels``...).
        metric_names: task metrics; the first selects the best checkpoint (higher is better).
        select_best: evaluate each epoch and return the best checkpoint; when False (objectives that do not train
            the classifier, such as TinyBERT's stage 1), skip evaluation and return the trained ``model`` itself.
    """
    assert training.resolved(), "budgets are chosen (distill.budget.resolve) before training"
    use_bf16, precision = resolve_precision(training.precision)
    if training.precision == "bf16" and not use_bf16:
        click.echo(f"note: training in {precision}", err=True)
    checkpoint_dir = work_dir / CHECKPOINTS_DIR
    log_dir = (work_dir / TRAIN_LOG).parent
    best_dir = checkpoint_dir / "best"
    processes = distributed.world_size()
    is_main = distributed.is_main()
    distributed.check_batch_sizes({"training.batch_size": training.batch_size}, processes)
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size // processes,  # the global batch stays the configured one
        per_device_eval_batch_size=max(1, training.eval_batch_size // processes),
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy=("steps" if training.eval_steps else "epoch") if select_best else "no",
        eval_steps=training.eval_steps,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=2,
        logging_steps=training.logging_steps,
        report_to="none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # keep the teacher-logit column; our datasets hold model inputs only
        bf16=use_bf16,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # without use_cpu, accelerate does not see a CPU data-parallel run and every rank would train alone
        use_cpu=not torch.cuda.is_available(),
        ddp_backend=("nccl" if torch.cuda.is_available() else "gloo") if processes > 1 else None,
        # only objectives that ignore the classifier head (select_best False) leave parameters without gradients;
        # searching for them every step would slow every other objective down
        ddp_find_unused_parameters=not select_best,
        disable_tqdm=False,
    )
    callbacks: list[TrainerCallback] = [
        JsonlLogCallback(work_dir / TRAIN_LOG),
        BestModelCallback(best_dir, f"eval_{metric_names[0]}"),
    ]
    if select_best and training.patience:
        callbacks.append(EarlyStopping(f"eval_{metric_names[0]}", training.patience))
    if is_main:  # a writer made on another rank would leave an empty event file behind
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir / "tensorboard"))))
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_metrics_fn(metric_names),
        objective=objective,
        teacher=teacher,
        callbacks=callbacks,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ReadableProgress)
    # rank 0 looks at the disk (removing a checkpoint cut short by a kill) and tells every rank where to resume
    last_checkpoint = distributed.on_main(lambda: last_complete_checkpoint(checkpoint_dir))
    trainer.train(resume_from_checkpoint=last_checkpoint)
    distributed.barrier()  # rank 0 may still be saving the best checkpoint
    if not select_best:
        return TrainResult(trainer.model, {}, list(trainer.state.log_history), last_checkpoint, precision)
    if not distributed.on_main((best_dir / "best.json").is_file):  # rank 0's disk decides, for every rank
        trainer.evaluate()  # on every rank: evaluation is sharded across them
        distributed.barrier()
    if not is_main:  # followers are done: rank 0 evaluates and saves the result
        return TrainResult(trainer.model, {}, list(trainer.state.log_history), last_checkpoint, precision)
    best = read_json(best_dir / "best.json")
    best_model = AutoModelForSequenceClassification.from_pretrained(best_dir, use_safetensors=True)
    history = list(trainer.state.log_history)
    return TrainResult(best_model, best, history, last_checkpoint, precision)


def budget(training: TrainingConfig) -> str:
    """A training budget in words: ``"2 epoch(s), batch 32, learning rate 0.0001"``."""
    length = f"{training.max_steps} steps" if training.max_steps else f"{training.epochs:g} epoch(s)"
    return f"{length}, batch {training.batch_size}, learning rate {training.learning_rate:g}"


def remove_checkpoints(work_dir: Path) -> None:
    """Delete the resumable training state once the trained model is safely saved."""
    shutil.rmtree(work_dir / CHECKPOINTS_DIR, ignore_errors=True)
