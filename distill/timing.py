"""Latency inputs, and the short interleaved timing that decides which graph of a bundle ships. Torch-free."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

Runner = Callable[[dict[str, np.ndarray]], object]


def latency_inputs(token_pool: np.ndarray, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """A ``(batch, seq)`` batch of dev-set tokens with no padding: what a full batch looks like in service."""
    rng = np.random.default_rng(seed)
    input_ids = rng.choice(token_pool, size=(batch, seq)).astype(np.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }


def interleaved_p50(
    runners: Mapping[str, tuple[Runner, list[str]]],
    feeds: dict[str, np.ndarray],
    warmup: int,
    iterations: int,
    block: int = 10,
    settle: int = 3,
) -> dict[str, float]:
    """Median milliseconds per call of each runner, timed in turns so that a busy moment hits all of them alike.

    Each turn runs one runner ``block`` times and times all but the first ``settle`` calls: ONNX Runtime's worker
    threads keep spinning for a while after a call, so a graph called right after another one runs beside the other's
    spinning threads (measured on 2 cores: three times slower when the turns were single calls).

    Args:
        runners: ``{name: (run one batch, the input names it takes)}``.
        feeds: the batch, as :func:`latency_inputs` builds it; each runner gets the inputs it names.
        warmup: untimed calls of each runner first.
        iterations: timed calls of each runner (rounded up to whole turns).
        block / settle: calls per turn, and how many of them go untimed.
    """
    assert 0 <= settle < block, "a turn times at least one call"
    inputs = {name: {key: feeds[key] for key in names} for name, (_, names) in runners.items()}
    for name, (run, _) in runners.items():
        for _ in range(warmup):
            run(inputs[name])
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(-(-iterations // (block - settle))):
        for name, (run, _) in runners.items():
            for call in range(block):
                tick = time.perf_counter()
                run(inputs[name])
                if call >= settle:
                    seconds[name].append(time.perf_counter() - tick)
    return {name: float(np.median(values) * 1000.0) for name, values in seconds.items()}
