"""``evaluation.md``: the Markdown view of what ``distill evaluate`` measured on a new file (``evaluation.json``)."""

from __future__ import annotations

from typing import Any

from distill.metrics import metric_name
from distill.report.markdown import fmt_agreement, table
from distill.report.statistics import Interval, verdict


def _points(interval: dict[str, float] | None) -> str:
    """A paired difference in points with its interval: ``"+0.90 (+0.30 to +1.50)"``."""
    if interval is None:
        return "n/a"
    return f"{100 * interval['estimate']:+.2f} ({100 * interval['low']:+.2f} to {100 * interval['high']:+.2f})"


def _with_interval(value: float, interval: dict[str, float]) -> str:
    return f"{value:.4f} ({interval['low']:.4f} to {interval['high']:.4f})"


def evaluation_markdown(result: dict[str, Any]) -> str:
    """``evaluation.md`` from the ``evaluation.json`` written by :func:`distill.evaluate_file.evaluate_file`."""
    metrics = result["metric_names"]
    main, regression = metrics[0], result["labels"] is None
    labels = "regression scores" if regression else "labels " + ", ".join(f"`{name}`" for name in result["labels"])
    reference = result.get("reference")
    intro = (
        f"{result['examples']} labelled examples from `{result['file']}` ({labels}), scored by every model "
        f"of `{result['target']}`. The {metric_name(main)} column gives each model's 95% bootstrap interval over "
        f"these examples ({result['bootstrap_resamples']} resamples)"
    )
    intro += (
        f"; differences from the {reference} and from a student's label-only twin are paired bootstrap 95% "
        "intervals on the same examples, in points."
        if reference
        else "; no teacher was scored, so there is no agreement or difference from it."
    )
    rows, sentences = [], []
    for row in result["artifacts"]:
        values = row["metrics"]
        twin = row.get("gain_over_twin")
        rows.append(
            [row["name"], row["role"], row["runtime"], row["precision"], _with_interval(values[main], row["interval"])]
            + [f"{values[name]:.4f}" for name in metrics[1:]]
            + [fmt_agreement(row.get("agreement_with_teacher"), regression), _points(row.get("vs_teacher"))]
            + [_points(twin)]
        )
        if twin is not None:
            gain = Interval(twin["estimate"], twin["low"], twin["high"], twin.get("level", 0.95))
            label = f"`{row['name']}` ({row['runtime']}, {row['precision']}) vs its twin `{twin['twin']}`"
            sentences.append(f"- {label}: {verdict('distillation', gain)}.")
    columns = ["artifact", "role", "runtime", "precision", f"{metric_name(main)} (95% interval)"]
    columns += [metric_name(name) for name in metrics[1:]]
    columns += ["agreement with teacher", "vs teacher (points)", "gain over twin (points)"]
    lines = [f"# Evaluation on `{result['file']}`", "", intro, "", *table(columns, rows), ""]
    return "\n".join([*lines, *sentences, *([""] if sentences else [])])
