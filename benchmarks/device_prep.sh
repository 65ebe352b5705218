#!/usr/bin/env bash
# Prepare, on a machine with internet access to PyPI, what benchmarks/device_check.sh needs on a GPU
# machine that has torch but neither pyro-ppl nor a network: wheels in .whl/ and MNIST, gzipped, in
# .devdata/ (both ignored by git, about 13 MB together; carry them to the GPU machine with the tree).
#   bash benchmarks/device_prep.sh [MNIST_ROOT]      MNIST_ROOT holds MNIST/raw (default: $PYROVAE_DATA)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-${PYROVAE_DATA:?give the folder holding MNIST/raw, or set PYROVAE_DATA}}"
py="${DEVICE_PYTHON:-3.12}"  # the GPU machine's Python
rm -rf .whl && mkdir -p .whl .devdata/MNIST/raw
ver() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
# pure-Python wheels and the few compiled ones the suite needs there (sweeps: optuna and its SQL stack)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "pyro-ppl==$(ver pyro-ppl)" "pyro-api==$(ver pyro-api)" "optuna==$(ver optuna)" \
  "alembic==$(ver alembic)" "sqlalchemy==$(ver sqlalchemy)" "mako==$(ver mako)" "colorlog==$(ver colorlog)"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ -f "$root/MNIST/raw/$f" ]; then gzip -9c "$root/MNIST/raw/$f" >".devdata/MNIST/raw/$f.gz"
  else cp "$root/MNIST/raw/$f.gz" .devdata/MNIST/raw/; fi
done
du -sh .whl .devdata
echo "now: device run with carry [\".whl\", \".devdata\"] and command: bash benchmarks/device_check.sh \$OUT"
