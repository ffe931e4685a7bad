#!/usr/bin/env bash
# Set up distill on a fresh machine: a virtual environment in .venv with the CPU build of torch 2.13.0
# (installed first, so that no multi-GB CUDA build is pulled in), then distill and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[test]"
