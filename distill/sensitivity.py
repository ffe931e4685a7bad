"""Per-node sensitivity: the few quantised nodes whose INT8 error breaks the budget, found by keeping them in fp32.

:func:`search_exclusions` is the search over any measurement: it screens each node (or, when there are more than
the trial cap allows, each layer first and then the nodes of the worst layers) by keeping it alone in fp32, ranks
them by how much that reduces the violations, adds them greedily in that order while each helps, stops at the
first set that passes, then drops any node the set passes without. :func:`sensitive_nodes` measures with real INT8
graphs on a subset of rows: every row the candidate got wrong, then the rows the fp32 graph decides most narrowly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from distill.config import Int8Config
from distill.int8 import Int8Spec, PreparedGraph
from distill.runtime import create_session, onnx_logits


@dataclass(frozen=True)
class Trial:
    """One measured exclusion set: violations (flips, or scores outside tolerance) on the search rows."""

    excluded: tuple[str, ...]
    violations: int
    mean_abs_diff: float
    passed: bool

    @property
    def key(self) -> tuple[int, float]:
        """Smaller is better: violations first, the mean |logit change| breaking ties."""
        return self.violations, self.mean_abs_diff


@dataclass(frozen=True)
class Search:
    """The smallest exclusion set found, whether it passed on the search rows, and every trial measured."""

    excluded: tuple[str, ...]
    passed: bool
    trials: list[Trial]


def search_exclusions(
    groups: Sequence[Sequence[str]], measure: Callable[[tuple[str, ...]], Trial], max_trials: int
) -> Search:
    """Greedy search for a small set of nodes to keep in fp32 so that ``measure`` passes.

    Args:
        groups: the quantised nodes, grouped by layer (each group in graph order).
        measure: builds and measures the graph with the given nodes kept in fp32.
        max_trials: most calls of ``measure``, the first (nothing excluded) included.
    """
    trials: list[Trial] = []

    def run(excluded: Sequence[str]) -> Trial:
        trial = measure(tuple(excluded))
        trials.append(trial)
        return trial

    baseline = run(())
    if baseline.passed:
        return Search((), True, trials)
    reserve = max(2, max_trials // 4)  # trials kept for the greedy pass and the pruning
    nodes = [node for group in groups for node in group]
    units = nodes
    if len(nodes) > max_trials - 1 - reserve and len(groups) > 1:  # too many to screen one by one: layers first
        layer_trials = []
        for group in groups:
            if len(trials) >= max_trials - reserve:
                break
            layer_trials.append((run(group).key, list(group)))
        units = [node for _, group in sorted(layer_trials, key=lambda item: item[0]) for node in group]
    screened = []
    for node in units:
        if len(trials) >= max_trials - reserve:
            break
        trial = run((node,))
        if trial.passed:
            return Search((node,), True, trials)
        screened.append(trial)
    ranked = sorted((trial for trial in screened if trial.key < baseline.key), key=lambda trial: trial.key)
    chosen, best = [], baseline
    for single in ranked:
        if best.passed or len(trials) >= max_trials:
            break
        trial = run([*chosen, *single.excluded])
        if trial.key < best.key:
            chosen, best = list(trial.excluded), trial
    if not best.passed:
        return Search(tuple(chosen), False, trials)
    for node in list(chosen):  # the smallest set: drop every node the set still passes without
        if len(chosen) == 1 or len(trials) >= max_trials:
            break
        reduced = [name for name in chosen if name != node]
        if run(reduced).passed:
            chosen = reduced
    return Search(tuple(chosen), True, trials)


def search_rows(reference: np.ndarray, candidate: np.ndarray, count: int) -> np.ndarray:
    """Indices of the rows to search on: those ``candidate`` changed most (flips first), then the narrowest.

    ``reference`` and ``candidate`` are ``(n, num_labels)`` logits; for regression, rows by largest score change.
    """
    if reference.shape[1] == 1:
        order = np.argsort(-np.abs(reference[:, 0] - candidate[:, 0]), kind="stable")
        return order[:count]
    top_two = np.sort(reference, axis=1)[:, -2:]
    margin = top_two[:, 1] - top_two[:, 0]
    flipped = reference.argmax(axis=1) != candidate.argmax(axis=1)
    order = np.lexsort((margin, ~flipped))  # flipped rows first, then by smallest fp32 margin
    return order[:count]


def row_violations(reference: np.ndarray, candidate: np.ndarray, cfg: Int8Config) -> np.ndarray:
    """Per row: 1 for a flip (classification) or a score change above the p99 tolerance, plus 1 above the maximum."""
    if reference.shape[1] == 1:
        change = np.abs(reference[:, 0] - candidate[:, 0])
        return (change > cfg.max_score_change_p99).astype(int) + (change > cfg.max_score_change).astype(int)
    return (reference.argmax(axis=1) != candidate.argmax(axis=1)).astype(int)


def allowed_violations(pool_size: int, regression: bool, cfg: Int8Config) -> int:
    """How many violations the whole pool may have: the flip budget, or the 1% of rows above the p99 tolerance."""
    rate = 0.01 if regression else cfg.max_flip_rate
    return math.floor(rate * pool_size + 1e-9)


def sensitive_nodes(
    prepared: PreparedGraph,
    spec: Int8Spec,
    pool: Sequence[dict[str, list[int]]],
    reference: np.ndarray,
    candidate: np.ndarray,
    num_layers: int,
    threads: int | None = None,
    disabled_optimizers: Sequence[str] = (),
) -> Search:
    """The nodes of ``spec`` to keep in fp32 so that its violations on the search rows fit the pool's budget.

    Args:
        prepared: ``spec.source`` prepared for quantisation.
        pool: the tokenised rows the budget is judged on (dev, then training rows).
        reference: ``(len(pool), num_labels)`` logits of the fp32 graph at batch 1.
        candidate: the same for ``spec``'s graph, which broke the budget.
        disabled_optimizers: ONNX Runtime optimisers switched off in the trial sessions, as in the bundle's.
    """
    cfg = prepared.cfg
    rows = search_rows(reference, candidate, cfg.sensitivity_examples)
    outside = int(np.delete(row_violations(reference, candidate, cfg), rows).sum())
    allowed = allowed_violations(len(pool), reference.shape[1] == 1, cfg) - outside
    subset, subset_reference = [pool[i] for i in rows], reference[rows]
    target = prepared.directory / "trial.onnx"

    def measure(excluded: tuple[str, ...]) -> Trial:
        prepared.quantize(replace(spec, exclude_nodes=excluded), target)
        logits = onnx_logits(create_session(target, threads, disabled_optimizers), subset, batch_size=1)
        violations = int(row_violations(subset_reference, logits, cfg).sum())
        mean_diff = float(np.abs(subset_reference - logits).mean())
        return Trial(excluded, violations, mean_diff, violations <= allowed)

    groups = prepared.layer_groups(prepared.quantisable_nodes(spec), num_layers)
    return search_exclusions(groups, measure, cfg.sensitivity_max_trials)


def excluded_label(spec: Int8Spec, excluded: Sequence[str]) -> str:
    """How a candidate with ``excluded`` nodes kept in fp32 is named."""
    return f"{spec.label}, {len(excluded)} node(s) kept in fp32"
