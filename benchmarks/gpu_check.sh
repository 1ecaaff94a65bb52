#!/usr/bin/env bash
# The CUDA check, in one command under 4 minutes on one GPU (docs/PERFORMANCE.md, "GPU"):
#   1. the fast path's equivalence tests and the fp32-master contract on CUDA (fp32 base:
#      the paths must agree to 1e-5, as on CPU; the contract test runs its bf16 base);
#   2. cuetune against PEFT with a bf16 base (soft prompt P=20 and LoRA r=8, a random model at
#      smollm2-135m's shapes: nothing to download), printing the train/eval/memory ratios;
#   3. one short `cuetune train` on that model, bf16, to see the whole CLI path run.
# Wheels this machine lacks come from .whl/ (benchmarks/gpu_wheels.sh fetches them elsewhere).
# Results: $OUT (or ./gpu-check) gets perf.json, the tables and the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
DEVICE=${GPU_CHECK_DEVICE:-cuda}  # GPU_CHECK_DEVICE=cpu: a dry run of this script on a CPU
python3 - <<PY
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
if "$DEVICE" == "cuda":
    assert torch.cuda.is_available(), "no CUDA device: run with GPU_CHECK_DEVICE=cpu for a dry run"
    print(torch.cuda.get_device_name())
PY
start=$SECONDS
CUETUNE_TEST_DEVICE=$DEVICE python3 -m pytest -q -x -p no:cacheprovider tests/test_fast_path.py \
    "tests/test_contract.py::test_a_bf16_base_trains_fp32_master_weights_and_optimizer_state" \
    2>&1 | tee "$OUT/tests.log" | tail -3
echo "tests: $((SECONDS - start)) s"
DTYPE=bfloat16; [ "$DEVICE" = cpu ] && DTYPE=float32  # bf16 is far slower than fp32 on CPUs
python3 benchmarks/perf_vs_peft.py --device "$DEVICE" --dtype $DTYPE --random-model \
    --settings soft-P20,lora-r8 --steps ${GPU_CHECK_STEPS:-30} --train 480 --dev 512 \
    --out "$OUT/perf.json" 2>&1 | grep -v Warning | tee "$OUT/perf.log" | tail -8
echo "perf: $((SECONDS - start)) s"
python3 - "$OUT" "$DEVICE" "$DTYPE" <<'PY'
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
import perf_vs_peft
import cuetune
out, device, dtype = sys.argv[1:]
model = perf_vs_peft.random_smollm2(Path(tempfile.mkdtemp()) / "m")
start = time.perf_counter()
m = cuetune.train(cuetune.load_config(None, [f"model.name={model}", f"model.device={device}",
                  f"model.dtype={dtype}", "method.name=soft", "train.max_steps=20", "train.progress=false",
                  "prompt.template={soft:20} Review: {text} Sentiment: {answer}",
                  f"output_dir={tempfile.mkdtemp()}"]))
print(f"cuetune train (soft P=20, 20 steps, {device} {dtype}): {time.perf_counter() - start:.1f} s, "
      f"test accuracy {m.metrics['test']['accuracy']:.3f} (random weights: chance expected)")
PY
echo "total: $((SECONDS - start)) s"
