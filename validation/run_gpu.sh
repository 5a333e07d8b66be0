#!/usr/bin/env bash
# The one prepared script for a session with a GPU: probe how cuBLAS accumulates,
# then validate the example models on CUDA into $OUT/results/<gpu-name>/
# (kernels.json, probe.json, mlp.json, cnn.json, deep_tanh.json, summary.txt), run
# the seed paper's models in every torch format (seed.json, examples/seed/seed_gpu.py),
# time the bound engine's torch backend there (backend_speed.json, scaling_grid.txt)
# and certify the seed VGG-11-BN's first test images with it (seed_full_ranges.jsonl).  Estimated
# 6-12 minutes on one H100 with 16 cores (not yet run on a GPU; the last three steps
# are capped at 10, 3 and 4 minutes): the validation bounds run
# on the CPU cores (~0.15 s per deep_tanh input and arithmetic on one core)
# while torch runs on the GPU.  Exit 0: no violation; 1: a bound or a certificate
# was violated (read summary.txt); other: an error.
#
#   bash validation/run_gpu.sh                          # on the device machine
#   DEVICE=cpu OUT=/tmp/out bash validation/run_gpu.sh  # the same path on a CPU
#
# Knobs: DEVICE (cuda), OUT (./out), DEEP_INPUTS (deep_tanh inputs, 512),
# INPUTS (cap for every model; unset = all 1,797), WORKERS (all cores),
# PYTHON (python3).
#
# The device image has torch, numpy, scipy, pyyaml, click but no pydantic
# (fperr.spec needs it).  Carry it as wheels in .whl (see the device README),
# made here once with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic pydantic-core annotated-types typing-inspection
# (pydantic-core's version must be the one pydantic's METADATA pins), and
# run with carry [".whl"]: this script installs them into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-out}
DEEP_INPUTS=${DEEP_INPUTS:-512}
WORKERS=${WORKERS:-$(nproc)}
if [ -f .venv/bin/activate ] && [ -z "${VIRTUAL_ENV:-}" ]; then . .venv/bin/activate; fi
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
$PY -c "import pydantic, yaml, scipy" || {
  echo "run_gpu.sh: pydantic, pyyaml or scipy missing; carry them as wheels (see the header)" >&2
  exit 2
}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
if [ "$DEVICE" != "cpu" ]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; fi

args=(--suite --device "$DEVICE" --results "$OUT/results" --deep-inputs "$DEEP_INPUTS" --workers "$WORKERS")
if [ -n "${INPUTS:-}" ]; then args+=(--limit "$INPUTS"); fi
start=$(date +%s)
status=0
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# elementwise-kernel errors on this device first (results/<gpu-name>/kernels.json)
$PY -m fperr.cli kernels --device "$DEVICE" --out "$OUT/results" || status=$?
$PY -m fperr.cli validate "${args[@]}" || status=$?
# the seed paper's models (examples/seed): flips and observed delta in every torch format
# (results/<gpu-name>/seed.json; about a minute on one GPU, the 1,000 stored images)
$PY examples/seed/seed_gpu.py --device "$DEVICE" --out "$OUT/results" ${INPUTS:+--n "$INPUTS"} \
  || status=$?
# the bound engine's backward passes on this device against numpy (issue 13): times and
# the largest relative difference of the bounds (<= 1e-12, else exit 1); about 2 minutes
label=$($PY -c "from fperr.hardware.suite import device_label; print(device_label('$DEVICE'))")
mkdir -p "$OUT/results/$label"
timeout 600 $PY benchmarks/backend_speed.py --n 1000 --seed-images 3 \
  --json "$OUT/results/$label/backend_speed.json" || status=$?
# issue 13's grid (quick: widths 256/1024, depths 2/4, N=300) with the backward passes on
# the device, against a numpy float64 forward pass on this machine's CPU; at most 3 minutes
if [ "$DEVICE" != "cpu" ]; then
  timeout 180 $PY benchmarks/scaling.py --quick --part grid --device "$DEVICE" \
    > "$OUT/results/$label/scaling_grid.txt" 2>&1 || echo "scaling grid: stopped ($?)"
fi
# seed VGG-11-BN certificates with the backward passes on the device (issue 14): the first
# 100 test images, deterministic, unstable ranges then full where undecided, 10 images per
# call; one JSON line per image (on one CPU core: about 13-25 s per image); at most 4 minutes
if [ "$DEVICE" != "cpu" ]; then
  timeout 240 $PY examples/seed/certify_full_ranges.py vgg11_bn $(seq 0 99) \
    --method deterministic --ranges unstable,full --device "$DEVICE" --batch 10 \
    --out "$OUT/results/$label/seed_full_ranges.jsonl" || echo "seed certificates: stopped ($?)"
fi
echo "validation/run_gpu.sh: exit $status after $(( $(date +%s) - start )) s; results in $OUT/results"
exit $status
