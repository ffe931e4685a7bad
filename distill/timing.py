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
    pause: float = 0.03,
) -> dict[str, float]:
    """Milliseconds per call of each runner, timed in rounds of turns, with each round's common slowdown removed.

    Each round gives every runner one turn: ``block`` consecutive calls, all but the first ``settle`` timed, after a
    ``pause``. ONNX Runtime's worker threads keep spinning for a while after a call, so a graph called right after
    another one runs beside the other's spinning threads: on 2 cores, three times slower when the turns were single
    calls, and on a 2-core EPYC up to 2.2x slower (one of six sessions of the same graph at 7 ms, others at 3.5 ms)
    until each turn waited 30 ms for the previous session's threads to go to sleep.
    A shared machine also has slow spells lasting seconds (1.4x on a 2-core cloud EPYC) that hit whichever graphs
    run then; since they last longer than a round, each round's spell is estimated as the median over runners of
    their turn's log-time against their own median, and divided out (one step of a median polish). A runner's time
    is then the median over rounds of its adjusted turn medians: what it takes at the machine's typical speed, and in
    the same units for every runner, so ratios between runners no longer depend on when each happened to run.

    Args:
        runners: ``{name: (run one batch, the input names it takes)}``.
        feeds: the batch, as :func:`latency_inputs` builds it; each runner gets the inputs it names.
        warmup: untimed calls of each runner first.
        iterations: timed calls of each runner (rounded up to whole turns).
        block / settle: calls per turn, and how many of them go untimed.
        pause: seconds of sleep before each turn.
    """
    assert 0 <= settle < block, "a turn times at least one call"
    inputs = {name: {key: feeds[key] for key in names} for name, (_, names) in runners.items()}
    for name, (run, _) in runners.items():
        for _ in range(warmup):
            run(inputs[name])
    rounds = -(-iterations // (block - settle))
    turns = np.empty((rounds, len(runners)))  # log of each turn's median seconds
    for round_index in range(rounds):
        for column, (name, (run, _)) in enumerate(runners.items()):
            time.sleep(pause)
            seconds = []
            for call in range(block):
                tick = time.perf_counter()
                run(inputs[name])
                if call >= settle:
                    seconds.append(time.perf_counter() - tick)
            turns[round_index, column] = np.log(max(float(np.median(seconds)), 1e-9))
    spells = np.median(turns - np.median(turns, axis=0), axis=1, keepdims=True)  # (rounds, 1): each round's spell
    adjusted = np.median(turns - spells, axis=0)
    return {name: float(np.exp(value) * 1000.0) for name, value in zip(runners, adjusted, strict=True)}
