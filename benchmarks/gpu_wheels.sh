#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels a bare CUDA machine (Python 3.12, x86-64) lacks to
# run cuetune: this venv's versions of transformers (>= 5.24), PEFT, huggingface_hub, tokenizers
# and pydantic. They land in .whl/ (git-ignored); benchmarks/gpu_check.sh installs them there.
#   ./benchmarks/gpu_wheels.sh          # here, once
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for name in transformers peft huggingface_hub tokenizers pydantic pydantic_core annotated_types \
            typing_inspection safetensors accelerate; do
    pins+=("$name==$(version "$name")")
done
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
ls .whl
