"""Residual LayerNorms fused into SkipLayerNormalization or kept apart: batch-1 latency of fp32 and INT8 graphs.

Usage:
    python benchmarks/layer_norm_fusion.py BUNDLE [BUNDLE ...] [--seq 128] [--threads 2] [--out FILE.json]

For each exported bundle (``onnx/NAME`` of a run, which holds ``model.onnx``), builds ORT's fused graph twice (with
``SkipLayerNormalization``, and with each residual ``Add`` and ``LayerNormalization`` apart, served with ONNX
Runtime's ``SkipLayerNormFusion`` switched off), quantises each with dynamic per-channel INT8, then times the four
graphs interleaved (``distill.timing.interleaved_p50``) and profiles one session of each to split the time by op.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distill.config import Int8Config
from distill.env import host_info
from distill.fusion import SKIP_LAYER_NORM_FUSION, optimize_graph
from distill.int8 import Int8Spec, PreparedGraph
from distill.runtime import create_session
from distill.timing import interleaved_p50, latency_inputs

NORM_OPS = ("SkipLayerNormalization", "LayerNormalization", "Add")


def profile_ops(path: Path, disabled: tuple[str, ...], feeds: dict, threads: int, calls: int = 50) -> dict[str, float]:
    """Mean ms per call spent in each op type, from ONNX Runtime's profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"], disabled_optimizers=list(disabled))
    names = [node.name for node in session.get_inputs()]
    for _ in range(calls + 10):
        session.run(None, {name: feeds[name] for name in names})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: totals[op] / (calls + 10) / 1000 for op in NORM_OPS if op in totals}


def measure(bundle: Path, seq: int, threads: int, iterations: int) -> dict:
    config = json.loads((bundle / "config.json").read_text())
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        graphs = {}
        for layout, fuse in (("fused", True), ("apart", False)):
            fp32 = scratch / f"{layout}.onnx"
            optimize_graph(bundle / "model.onnx", fp32, heads, hidden, skip_layer_norm=fuse)
            int8 = scratch / f"{layout}.int8.onnx"
            with PreparedGraph(fp32, Int8Config()) as prepared:
                prepared.quantize(Int8Spec(layout, fp32, static=False, per_channel=True), int8)
            disabled = () if fuse else (SKIP_LAYER_NORM_FUSION,)
            graphs[f"fp32 {layout}"] = (fp32, disabled)
            graphs[f"int8 {layout}"] = (int8, disabled)
        feeds = latency_inputs(np.arange(1000, 20000), 1, seq, seed=seq)
        runners = {}
        for key, (path, disabled) in graphs.items():
            session = create_session(path, threads, disabled)
            runners[key] = ((lambda f, s=session: s.run(None, f)), [node.name for node in session.get_inputs()])
        p50 = interleaved_p50(runners, feeds, warmup=10, iterations=iterations)
        ops = {key: profile_ops(path, disabled, feeds, threads) for key, (path, disabled) in graphs.items()}
    return {
        "bundle": str(bundle),
        "p50_ms": p50,
        "apart_speedup": {p: p50[f"{p} fused"] / p50[f"{p} apart"] for p in ("fp32", "int8")},
        "norm_ops_ms": ops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=140)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [measure(bundle, args.seq, args.threads, args.iterations) for bundle in args.bundles]
    for result in results:
        p50, ops = result["p50_ms"], result["norm_ops_ms"]
        print(result["bundle"])
        for key, value in p50.items():
            split = ", ".join(f"{op} {ms:.2f}" for op, ms in ops[key].items())
            print(f"  {key:11s} p50 {value:6.2f} ms   ({split} ms per inference, summed over the nodes)")
        print("  apart vs fused: " + ", ".join(f"{p} {x:.2f}x" for p, x in result["apart_speedup"].items()))
    if args.out:
        host = {**host_info(), "python": platform.python_version(), "onnxruntime": ort.__version__}
        payload = {"seq": args.seq, "batch": 1, "threads": args.threads, "host": host, "results": results}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
