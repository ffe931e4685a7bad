"""The sections of report.md, each a list of lines (the latency ones in :mod:`distill.report.latency`, their order in
:func:`distill.report.report_lines`), and the one Markdown table helper every table writer uses."""

from __future__ import annotations

from collections.abc import Sequence

from distill.bundle_records import Int8Fidelity, Int8Try, OptimizedFidelity
from distill.layout import BARS_FILE, SCATTER_FILE, STAGE1_FILE, TWIN_SUFFIX, RunLayout
from distill.metrics import metric_name
from distill.records import PaddingCheck
from distill.report.candidates import COLUMNS as CANDIDATE_COLUMNS
from distill.report.candidates import INTRO as CANDIDATE_INTRO
from distill.report.candidates import candidate_notes, candidate_rows
from distill.report.results import STAGE1_TERMS, RunView


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table: the header line, its separator and one line per row (cells already formatted)."""
    return [_line(header), "|" + "---|" * len(header), *(_line(row) for row in rows)]


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def section(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], intro: str = "") -> list[str]:
    """A section of a Markdown document: its ``##`` title, an optional paragraph, a table and a blank line."""
    return [f"## {title}", "", *([intro, ""] if intro else []), *table(header, rows), ""]


def plot_link(layout: RunLayout, alt: str, file_name: str) -> str:
    """A Markdown image of a plot in the run's bench folder, by its path relative to report.md."""
    return f"![{alt}]({layout.plot(file_name).relative_to(layout.root).as_posix()})"


def fmt_ratio(value: float | None, suffix: str = "x") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def fmt_agreement(value: float | None, regression: bool) -> str:
    """A share of equal predictions as a percentage; for regression the Pearson correlation that stands in for it."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if regression else f"{100 * value:.1f}%"


def header(view: RunView) -> list[str]:
    host, versions, protocol = view.results.host, view.results.versions, view.results.protocol
    flags = ", ".join(host.get("cpu_flags", [])) or "none detected"
    version_text = " · ".join(f"{name} {version}" for name, version in versions.items() if version)
    return [
        f"# Distillation report: {view.layout.root.name}",
        "",
        f"**Host:** {host['cpu']}, {host['logical_cores']} logical cores "
        + f"({host.get('available_cores', '?')} available), flags: {flags}; {host['platform']}.  ",
        f"**Versions:** {version_text}.  ",
        f"**Latency protocol:** {protocol['threads']} thread(s), {protocol['warmup']} warm-up run(s), then up to "
        + f"{protocol['iterations']} timed runs or {protocol['max_seconds_per_point']:g} s per point (at least 5); "
        + "inputs are full batches of dev-set tokens without padding.",
        "",
    ]


def busy_host(view: RunView) -> list[str]:
    """A warning when other work was loading the CPU as the benchmark started: its latencies are then inflated."""
    host = view.results.host
    load, cores = host.get("other_cpu_load_before"), host.get("available_cores") or host.get("logical_cores")
    if load is None or not cores or load <= 0.25 * cores:
        return []
    return [
        f"> **Warning:** other processes were using {load:.2f} of {cores} core(s) when the benchmark started; "
        "they competed for the CPU, so latencies are inflated. Rerun `distill bench` on a quiet machine."
    ]


def slower_students(view: RunView) -> list[str]:
    """A warning line for every student artifact that is not faster than the teacher's PyTorch at batch 1."""
    warnings = []
    for row in view.artifacts:
        if row.role != "student":
            continue
        slow = []
        for batch, seq in view.points:
            mine, teacher = view.p50(row, batch, seq), view.p50(view.teacher, batch, seq)
            if batch == 1 and mine and teacher and mine >= teacher:
                slow.append(f"seq {seq}: {mine:.2f} ms vs {teacher:.2f} ms")
        if slow:
            warnings.append(
                f"> **Warning:** student `{row.label}` is not faster than the teacher's PyTorch model "
                f"at batch 1 (p50 at {'; '.join(slow)}); check the thread setting and the student's size."
            )
    return warnings


def trivial_students(view: RunView) -> list[str]:
    """A warning line for every student whose dev main metric does not beat the trivial baseline by the teacher
    gate's margin: it has not learned the task, whatever it retains of a weak teacher."""
    evaluation = view.teacher_eval
    baseline = evaluation.trivial() if evaluation is not None else None
    main = evaluation.main_metric if evaluation is not None else None
    if baseline is None or main not in baseline.metrics:
        return []
    floor, margin = baseline.metrics[main], evaluation.min_margin or 0.0
    warnings = []
    for name, student in view.student_evals.items():
        value = student.metrics.get(main)
        if value is not None and value <= floor + margin:
            warnings.append(
                f"> **Warning:** student `{name}` scores dev {metric_name(main)} {value:.4f}, not better than the "
                f"trivial baseline's {floor:.4f} ({baseline.answer()}) by the teacher gate's margin {margin:g}: it "
                "has not learned the task. Try a deeper student (`num_layers`), more training data or a stronger "
                "teacher before deploying it."
            )
    return warnings


def teacher_section(view: RunView) -> list[str]:
    lines = ["## Teacher", ""]
    evaluation = view.teacher_eval
    if evaluation is None:
        return [*lines, f"No {view.layout.teacher_eval.relative_to(view.layout.root).as_posix()} in this run.", ""]
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in evaluation.metrics.items())
    tuned = "fine-tuned in this run" if evaluation.finetuned_here else "used as given (not fine-tuned here)"
    lines.append(f"`{evaluation.source}`, {tuned}. Dev {metrics}.")
    candidates = evaluation.candidates
    if candidates:
        main = evaluation.main_metric
        each = ", ".join(f"{c.words()} {c.metrics[main]:.4f}" for c in candidates.seeds)
        per = "seed and learning rate" if candidates.chosen_learning_rate is not None else "seed"
        lines.append(
            f"Fine-tuned once per {per} ({each}); {candidates.chosen().words()} has the best dev {main} and is the "
            "teacher. It was chosen on the same dev set that scores every model here, so its dev score is slightly "
            "optimistic."
        )
    baseline = evaluation.trivial()
    if baseline is not None:
        scores = [f"{metric_name(name)} {value:.4f}" for name, value in baseline.metrics.items()]
        scores += [f"MSE {baseline.mse:.4f}"] if baseline.mse is not None else []
        kind = "majority-class" if baseline.mean is None else "mean-score"
        lines.append(f"Trivial ({kind}) baseline, {baseline.answer()}: {', '.join(scores)}.")
    return [*lines, ""]


def artifact_section(view: RunView) -> list[str]:
    teacher_metric, teacher_size = view.teacher.metrics.get(view.metric), view.teacher.size_bytes
    rows = []
    for row in view.artifacts:
        value = row.metrics.get(view.metric)
        retained = 100 * value / teacher_metric if value is not None and teacher_metric else None
        rows.append(
            [
                row.name,
                row.role,
                row.runtime,
                row.precision if row.over_budget is None else f"{row.precision} ({row.over_budget})",
                "n/a" if value is None else f"{value:.4f}",
                fmt_ratio(retained, "%"),
                fmt_agreement(row.agreement_with_teacher, view.regression),
                f"{row.size_bytes / 1e6:.2f}",
                f"{row.parameters / 1e6:.2f}",
                fmt_ratio(row.size_bytes / teacher_size if teacher_size else None),
                _fmt_padding(row.padding_check),
            ]
        )
    columns = ["artifact", "role", "runtime", "precision", view.metric, "retained vs teacher", "agreement with teacher"]
    columns += ["size (MB)", "params (M)", "size vs teacher", "padding check"]
    return section("Artifacts", columns, rows)


def _fmt_padding(check: PaddingCheck | None) -> str:
    if check is None:
        return "n/a"
    verdict = "pass" if check.passed else f"FAIL ({check.flips} flips)"
    return f"{verdict}, max diff {check.max_abs_diff:.1e}"


def _kept(part: OptimizedFidelity | Int8Fidelity) -> str:
    return "kept" if part.kept else "not kept" if part.enabled else "off"


def _fmt_flips(check: OptimizedFidelity | Int8Try | None) -> str:
    if check is None or check.flip_rate is None:
        return "n/a"
    return f"{100 * check.flip_rate:.2f}% (max diff {check.max_abs_diff:.1e})"


def _attempt(attempt: Int8Try) -> str:
    if attempt.error is not None:
        return f"{attempt.setting}: {attempt.error}"
    return f"{attempt.setting}: flips {100 * attempt.flip_rate:.2f}%, drop {100 * attempt.metric_drop:+.2f} pt"


def deployment_section(view: RunView) -> list[str]:
    """What graph optimisation and INT8 did to each bundle, against the fp32 ONNX graph, and what was tried."""
    records = {name: r for name, r in view.fidelities.items() if r.optimized is not None or r.int8 is not None}
    if not records:
        return []
    rows, notes = [], []
    for name, record in records.items():
        optimized, int8 = record.optimized or OptimizedFidelity(), record.int8 or Int8Fidelity()
        fused = ", ".join(f"{op} {count}" for op, count in optimized.fused_ops.items()) or "n/a"
        chosen = int8.chosen()
        drop = f"{100 * chosen.metric_drop:+.2f} pt" if chosen else "n/a"
        int8_cells = [_kept(int8), chosen.setting if chosen else "n/a", _fmt_flips(chosen), drop]
        rows.append([name, _kept(optimized), fused, _fmt_flips(optimized), *int8_cells])
        notes += [f"- `{name}`: {reason}." for reason in (optimized.reason, int8.reason) if reason]
        if len(int8.attempts) > 1:
            tried = "; ".join(_attempt(attempt) for attempt in int8.attempts)
            notes.append(f"- `{name}` INT8 settings tried in order: {tried}.")
    columns = ["export", "optimised graph", "fused ops", "flips vs fp32", "INT8", "INT8 setting", "flips vs fp32"]
    intro = "Each variant is compared with its fp32 ONNX graph on the dev split; "
    intro += "a variant outside its budget is not shipped."
    lines = [*section("Optimisation and INT8", [*columns, "metric drop"], rows, intro), *notes]
    lines += [""] if notes else []
    candidates, comparisons = candidate_rows(view), candidate_notes(view)
    lines += section("INT8 candidates", CANDIDATE_COLUMNS, candidates, CANDIDATE_INTRO) if candidates else []
    return [*lines, *comparisons, *([""] if comparisons else [])]


def students_section(view: RunView) -> list[str]:
    evaluations = view.student_evals
    if not evaluations:
        return []
    metric = view.metric
    rows = []
    for name, evaluation in evaluations.items():
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in evaluation.metrics.items())
        agree = fmt_agreement(evaluation.agreement_with_teacher, view.regression)
        params, teacher_params = evaluation.parameters, evaluation.teacher_parameters
        size = f"{params / 1e6:.2f}M ({params / teacher_params:.0%})" if params and teacher_params else "?"
        twin = evaluations.get(f"{name}{TWIN_SUFFIX}")
        gain = "n/a"
        if twin is not None and metric in twin.metrics and metric in evaluation.metrics:
            gain = f"{100 * (evaluation.metrics[metric] - twin.metrics[metric]):+.2f} points"
        rows.append([name, evaluation.objective, metrics, agree, size, gain])
    columns = ["student", "objective", "metrics", "agreement with teacher", "parameters (vs teacher)"]
    intro = (
        f"Each label-only twin (`NAME{TWIN_SUFFIX}`) has its student's architecture, initialisation and number of "
        f"epochs, trained on hard labels only. The gain is one run's difference on the dev set; {_noise(view)}"
    )
    lines = section("Students at the end of training", [*columns, f"{metric} gain over twin"], rows, intro)
    for name in evaluations:
        record = view.student_record(name)
        augmentation = record.augmentation if record is not None else None
        if augmentation:
            lines += [
                f"Augmentation for `{name}`: {augmentation.generated} copies generated from "
                f"{augmentation.source_examples} examples ({augmentation.candidates_from}); "
                f"{augmentation.dropped_disagreeing} dropped because the teacher labelled them differently "
                f"from their source; {augmentation.kept} kept.",
                "",
            ]
    return lines


def _noise(view: RunView) -> str:
    """How large a one-seed gain must be to stand out of noise, from this dev set's size and metric."""
    error = view.standard_error()
    if error is None:
        return "with one seed, a small gain cannot be told from noise."
    value, examples, how = error
    return (
        f"with one seed, a gain under about {200 * value:.1f} points (two standard errors of one model's dev "
        f"{metric_name(view.metric)} on these {examples} examples, {how}) cannot be told from noise."
    )


def stage1_section(view: RunView) -> list[str]:
    """Start and end of every stage-1 loss term, and a link to their plot (:func:`.plots.plot_stage1_losses`)."""
    logs = view.stage1_logs
    if not logs:
        return []
    rows = []
    for name, records in logs.items():
        tail = max(1, len(records) // 10)
        for term in STAGE1_TERMS:
            values = [r[term] for r in records if term in r]
            if not values:
                continue
            start, end = sum(values[:tail]) / tail, sum(values[-tail:]) / tail
            rows.append([name, term, f"{start:.4f}", f"{end:.4f}", f"{100 * (end / start - 1):+.1f}%"])
    intro = "Mean of the first and of the last 10% of logged training steps."
    columns = ["student", "term", "start", "end", "change"]
    title = "TinyBERT stage 1: intermediate-layer losses"
    return [*section(title, columns, rows, intro), plot_link(view.layout, "stage-1 losses", STAGE1_FILE), ""]


def fidelity_section(view: RunView) -> list[str]:
    if not view.fidelities:
        return []
    rows = []
    for name, record in view.fidelities.items():
        flip = record.flip_rate
        checks = ", ".join(f"{c['batch']}x{c['seq']}: {c['max_abs_diff']:.2e}" for c in record.check_shapes)
        opset = "?" if record.opset is None else str(record.opset)
        flips = "n/a" if flip is None else f"{100 * flip:.2f}%"
        agree, nodes = fmt_agreement(record.agreement_with_teacher, view.regression), sum(record.op_counts.values())
        rows.append([name, opset, f"{record.max_abs_diff:.2e}", flips, agree, checks, str(nodes)])
    columns = ["export", "opset", "dev max abs diff", "flip rate", "agreement with teacher"]
    intro = "Logit differences and prediction flips of each ONNX export against its own PyTorch model."
    return section("ONNX fidelity", [*columns, "check shapes (batch x seq: max diff)", "nodes"], rows, intro)


def plots_section(layout: RunLayout, metric: str = "accuracy") -> list[str]:
    return [
        "## Plots",
        "",
        plot_link(layout, f"{metric_name(metric)} vs latency", SCATTER_FILE),
        "",
        plot_link(layout, "p50 latency per artifact", BARS_FILE),
        "",
    ]


def budget_section(view: RunView) -> list[str]:
    """The training budgets distill chose from the data, one bullet each (nothing when the config stated them)."""
    if not view.budget_notes:
        return []
    intro = "Chosen by distill from the training data (docs/budget.md); the run's config.yaml records every value."
    return ["## Training budgets", "", intro, "", *(f"- {note}" for note in view.budget_notes), ""]
