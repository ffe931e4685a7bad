#!/usr/bin/env bash
# Issue 7's TinyBERT-style evidence on a CPU machine (no GPU lent): configs/sst2/tinybert.yaml's teacher once (three
# fine-tuning seeds, the best on dev kept; bf16 autocast), then per seed the recommended TinyBERT-style student
# (augmentation x2) and its label-only twin, each seed its own run sharing that teacher, then the statistics.
#
#   bash benchmarks/tinybert_evidence_cpu.sh RUNS [SEED ...]   # default seeds 0 1 2; RUNS e.g. runs/tiny-cpu
#
# The first seed runs alone on every core; the others two at a time, each on half the cores.
# Every stage resumes: after a stop, run the same command again. Needs AVX512-BF16 or AMX for bf16 to pay;
# elsewhere drop the precision overrides (fp32 takes about twice as long). On 2 cores: teacher 3 x 14 min, each seed
# (augmentation, both stages, twin) about an hour.
set -eu
runs=${1:?RUNS directory}
shift
[ $# -gt 0 ] || set -- 0 1 2
seeds=("$@")
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python=${PYTHON:-.venv/bin/python}
mkdir -p "$runs"
$python -m distill teacher configs/sst2/tinybert.yaml --run-dir "$runs/teacher" \
    --set teacher.training.precision=bf16 > "$runs/teacher.log" 2>&1
seed_run() {
    for stage in teacher train; do
        OMP_NUM_THREADS=$2 $python -m distill $stage configs/sst2/tinybert.yaml --run-dir "$runs/aug-s$1" \
            --set teacher.source="$runs/teacher/teacher" --set "seeds=[$1]" \
            --set students.0.intermediate.training.precision=bf16 --set students.0.prediction.training.precision=bf16 \
            || return 1
    done > "$runs/aug-s$1.log" 2>&1
}
cores=$(nproc)
half=$(( cores > 1 ? cores / 2 : 1 ))
seed_run "${seeds[0]}" "$cores"
rest=("${seeds[@]:1}")
for ((i = 0; i < ${#rest[@]}; i += 2)); do
    seed_run "${rest[i]}" "$half" &
    first=$!
    if [ $((i + 1)) -lt ${#rest[@]} ]; then seed_run "${rest[i + 1]}" "$half"; fi
    wait "$first"
done
$python benchmarks/merge_seed_runs.py --out "$runs/merged" "${seeds[@]/#/$runs/aug-s}" \
    --data-validation ../shared/data/glue/SST-2/dev.tsv
cat "$runs/merged/statistics.md"
