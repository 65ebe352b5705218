#!/usr/bin/env bash
# The GPU check, in one run on a machine with CUDA and torch but no pyro-ppl and no network
# (prepare with benchmarks/device_prep.sh and carry .whl/ and .devdata/). Writes its logs to OUTDIR:
#   env.txt        nvidia-smi, versions
#   cuda.log       tests/test_cuda.py (the GPU paths end to end)
#   suite.log      the whole test suite with the default device (CUDA), in parallel
#   readme.log     the README's main job on the GPU, and its eval.json
#   bench.log      benchmarks on the GPU (benchmarks/gpu.py where present, epoch_time.py)
#   summary.txt    one line per part: exit status and seconds
# usage: bash benchmarks/device_check.sh OUTDIR     (about 8 minutes on one H200)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?give a folder for the logs}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$out/summary.txt"; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d .devdata/MNIST/raw ]; then
  mkdir -p /tmp/pyrovae-data/MNIST/raw
  for f in .devdata/MNIST/raw/*.gz; do gunzip -c "$f" >"/tmp/pyrovae-data/MNIST/raw/$(basename "$f" .gz)"; done
  export PYROVAE_DATA=/tmp/pyrovae-data
fi
part() {  # part NAME LIMIT_SECONDS LOGFILE COMMAND...: run with a time limit, log, record status and time
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "$name: rc $rc, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}
{ nvidia-smi; python3 -c "import torch, pyro, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('pyro', pyro.__version__)"; nproc; } >"$out/env.txt" 2>&1
: >"$out/summary.txt"
part "tests/test_cuda.py" 200 "$out/cuda.log" python3 -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py
# the notebooks need a Jupyter kernel stack the GPU image lacks; the docs tests need mkdocs
part "whole suite (-n 12, notebooks and docs left out)" 330 "$out/suite.log" python3 -m pytest -q -p no:cacheprovider \
  -n 12 --timeout 240 --ignore=tests/test_notebooks.py --ignore=tests/test_docs.py --durations=15
part "README job" 90 "$out/readme.log" python3 -m pyrovae train --preset tutorial --batch-size 128 --epochs 10 \
  --out /tmp/runs/tutorial --overwrite --quiet
cat /tmp/runs/tutorial/eval.json /tmp/runs/tutorial/metrics.csv >>"$out/readme.log" 2>/dev/null
if [ -f benchmarks/gpu.py ]; then part "benchmarks/gpu.py" 90 "$out/bench.log" python3 benchmarks/gpu.py; fi
part "benchmarks/epoch_time.py" 60 "$out/bench.log" python3 benchmarks/epoch_time.py --device cuda --epochs 2 \
  --eval-repeats 2
cat "$out/summary.txt"
