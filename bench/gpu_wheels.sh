#!/usr/bin/env bash
# Fetch, HERE, the wheels bench/gpu.sh needs on the device machine (nothing can be downloaded there).
# Its image has Python 3.12 with torch 2.11 (CUDA 13), numpy, rich and typer; the benches also need
# faiss (CPU baseline; the storage layer imports it) and SQLAlchemy (storage). About 35 MB in .whl/,
# which stays out of git (.git/info/exclude) and travels with `carry: [".whl"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "faiss-cpu==1.15.1" "sqlalchemy==2.1.*"
ls -la .whl
