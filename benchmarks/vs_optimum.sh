#!/usr/bin/env bash
# Distill's shipped ONNX graphs against Hugging Face Optimum's for the same trained teacher and student.
# Usage: bash benchmarks/vs_optimum.sh RUN_DIR STUDENT OUT
#   RUN_DIR: a finished `distill run` directory; STUDENT: one of its students; OUT: where results go.
# Optimum pins an older transformers, so it lives in its own virtual environment (.venv-optimum), never in distill's.
# It exports each model with `optimum-cli export onnx` and quantises it with `optimum-cli onnxruntime quantize
# --avx512_vnni` (dynamic INT8, the CLI's setting for VNNI hosts); then vs_optimum.py, in distill's environment, times
# every graph interleaved in one process and scores each on the dev split.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=$1 STUDENT=$2 OUT=$3
VENV=.venv-optimum
if [ ! -x "$VENV/bin/optimum-cli" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch==2.13.0
  "$VENV/bin/pip" install --quiet "optimum-onnx[onnxruntime]==0.1.0"  # optimum 1.27 does not import with torch 2.13
fi
for NAME in teacher "$STUDENT"; do
  MODEL="$RUN_DIR/teacher"
  [ "$NAME" = teacher ] || MODEL="$RUN_DIR/students/$NAME"
  rm -rf "$OUT/optimum/$NAME"
  "$VENV/bin/optimum-cli" export onnx --model "$MODEL" --task text-classification "$OUT/optimum/$NAME/fp32"
  "$VENV/bin/optimum-cli" onnxruntime quantize --onnx_model "$OUT/optimum/$NAME/fp32" --avx512_vnni \
    -o "$OUT/optimum/$NAME/int8"
done
.venv/bin/python benchmarks/vs_optimum.py --run-dir "$RUN_DIR" --student "$STUDENT" --optimum "$OUT/optimum" \
  --out "$OUT"
rm -rf "$OUT/optimum"  # the graphs are rebuilt by this script; only the results are kept
