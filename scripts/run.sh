#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine with Python 3.11 and root (or sudo):
#
#   bash scripts/run.sh quickstart   # install everything, then train REF + BNN and compare PGD vs PGD++
#   bash scripts/run.sh test         # install everything, then ruff + mypy, the API reference, the test suite
#   bash scripts/run.sh docs         # install everything, then build the API reference (docs/_build/html)
#   bash scripts/run.sh install      # only install
#
# Idempotent: a second run skips what is already installed (a stamp records the install).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}
STAMP="$VENV/.bnnrobust-installed"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

install_python() {
  local want
  want=$(cat pyproject.toml scripts/pins.txt | sha256sum | cut -c1-16)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import bnnrobust, lightning, torchattacks, sphinx" 2>/dev/null; then
    echo "[setup] Python environment up to date ($VENV)"
    return
  fi
  echo "[setup] creating/updating $VENV (first time: a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>/dev/null || true
  "$VENV/bin/python" -m pip install -q -c scripts/pins.txt -r scripts/pins.txt
  "$VENV/bin/python" -m pip install -q -c scripts/pins.txt -e ".[dev,docs]"
  echo "$want" > "$STAMP"
}

install_data() {
  if ls "$FMNIST_DIR"/train-images-idx3-ubyte* >/dev/null 2>&1 || ls data/FashionMNIST/raw/train-images-idx3-ubyte* >/dev/null 2>&1; then
    echo "[setup] Fashion-MNIST present"
    return
  fi
  echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  if as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
     || { as_root apt-get update -qq >/dev/null 2>&1 && as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; then
    return
  fi
  echo "[setup] apt could not install it; downloading with torchvision instead (needs internet)"
  "$VENV/bin/python" -c "import torchvision; [torchvision.datasets.FashionMNIST('data', train=t, download=True) for t in (True, False)]"
}

static_checks() {  # fails the command (set -e) on any lint or type error
  echo "[check] ruff check ."
  "$VENV/bin/ruff" check .
  echo "[check] mypy bnnrobust callbacks train.py evaluate.py"
  "$VENV/bin/mypy" bnnrobust callbacks train.py evaluate.py
}

build_docs() {  # the API reference from the docstrings; any Sphinx warning fails the command
  # -E: a fresh environment every time, so that a warning of an unchanged page is not hidden
  # by a cached build and a new module is found; -n: every cross-reference must resolve.
  echo "[docs] sphinx-build -W -n docs/api -> docs/_build/html"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$VENV/bin/python" -m sphinx -b html -E -W --keep-going -n -q \
    -d docs/_build/doctrees docs/api docs/_build/html
  echo "[docs] API reference: docs/_build/html/index.html"
}

cmd=${1:-quickstart}
shift || true
case "$cmd" in
  install)
    install_python; install_data ;;
  quickstart)
    install_python; install_data
    exec "$VENV/bin/python" -m bnnrobust.quickstart "$@" ;;
  test)
    install_python; install_data
    static_checks
    build_docs
    exec "$VENV/bin/python" -m pytest "$@" ;;
  docs)
    install_python
    build_docs ;;
  *)
    echo "usage: bash scripts/run.sh {quickstart|test|docs|install} [extra args]" >&2; exit 2 ;;
esac
