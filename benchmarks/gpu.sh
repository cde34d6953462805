#!/usr/bin/env bash
# GPU checks and figures: CUDA tests (golden parity, fp16 fidelity, CUDA graphs, torch.compile, the demo),
# a CLI run with CUDA graphs, then `star-deploy bench` on CUDA for each preset and batch size.
# Every bench row carries its fidelity against a float32 generation of the same model (teacher-forced
# token agreement and image PSNR); targets: >= 99 % and >= 35 dB in fp16.
# Usage: benchmarks/gpu.sh [tests|bench|all]
# Env: OUT (results folder, default gpu-results), RUNS (preset:batch pairs, default
# "1024-d30:1 1024-d30:4 512-d30:1 256-d16:1"), BACKENDS (bench backends), REPEAT (5).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
what="${1:-all}"
log="$OUT/log.txt"
status=0
backends="${BACKENDS:-torch-eager,torch,torch-cuda-graphs,torch-compiled,torch-compiled-cuda-graphs}"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$log"
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" | tee -a "$log"

if [[ "$what" == tests || "$what" == all ]]; then
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_demo.py -k "cuda" 2>&1 | tee -a "$log" || status=1
    python3 -m pytest -q -p no:cacheprovider tests/test_loop.py tests/test_compile.py 2>&1 | tee -a "$log" || status=1
    python3 -m star_deploy run "a red circle on a blue background" "a small yellow triangle on black" --backend torch \
        "a green square on a white background" --device cuda --dtype float16 --cuda-graphs \
        --out "$OUT" --overwrite 2>&1 | tee -a "$log" || status=1
fi

if [[ "$what" == bench || "$what" == all ]]; then
    # torch-compiled* compile the step once per scale in their first warm-up (minutes at 1024-d30;
    # inductor's on-disk cache makes later runs of the same shapes faster).
    for run in ${RUNS:-1024-d30:1 1024-d30:4 512-d30:1 256-d16:1}; do
        p="${run%%:*}" b="${run##*:}"
        python3 -m star_deploy bench --random-weights --preset "$p" --batch-size "$b" --device cuda --dtype float16 \
            --backends "$backends" --warmup 2 --repeat "${REPEAT:-5}" \
            --json "$OUT/bench_${p}_b${b}.json" 2>&1 | tee -a "$log" || status=1
    done
fi
exit $status
