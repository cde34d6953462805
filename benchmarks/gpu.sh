#!/usr/bin/env bash
# GPU checks and figures: CUDA tests (golden parity, fp16 fidelity, CUDA graphs, torch.compile, the demo),
# a CLI run with CUDA graphs, then `star-deploy bench` on CUDA for each preset and batch size.
# Every bench row carries its fidelity against a float32 generation of the same model (teacher-forced
# token agreement and image PSNR); targets: >= 99 % and >= 35 dB in fp16.
# Usage: benchmarks/gpu.sh [tests|bench|fast|all|device]
# `fast` measures every fast-mode rung at 1024-d30 batch 1 (benchmarks/fast_modes.py).
# `device` is the one-call check for a lent GPU, within 8 minutes from a tree trimmed by
# benchmarks/device_tree.sh: the CUDA tests (the demo's when the demo is there), the CPU proxies,
# then the 1024-d30 batch-1 bench of every torch variant (torch.compile cold, into $OUT/compile-cache).
# Env: OUT (results folder, default gpu-results), RUNS (preset:batch pairs, default
# "1024-d30:1 1024-d30:4 512-d30:1 256-d16:1"), BACKENDS (bench backends), REPEAT (5),
# COMPILE_CACHE (folder of compiled artefacts, default $OUT/compile-cache).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
what="${1:-all}"
log="$OUT/log.txt"
status=0
backends="${BACKENDS:-torch-eager,torch,torch-cuda-graphs,torch-compiled,torch-compiled-cuda-graphs}"
compile_cache="${COMPILE_CACHE:-$OUT/compile-cache}"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$log"
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" | tee -a "$log"

if [[ "$what" == device ]]; then
    demo=()
    [[ -d star_deploy/demo/weights ]] && demo=(tests/test_demo.py)
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py "${demo[@]}" -k "cuda" 2>&1 |
        tee -a "$log" || status=1
    python3 benchmarks/cpu_proxies.py ops --json "$OUT/cpu_proxies_ops.json" 2>&1 | tee -a "$log" || status=1
    RUNS="${RUNS:-1024-d30:1}" REPEAT="${REPEAT:-3}"
fi

if [[ "$what" == tests || "$what" == all ]]; then
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_demo.py -k "cuda" 2>&1 | tee -a "$log" || status=1
    python3 -m pytest -q -p no:cacheprovider tests/test_loop.py tests/test_compile.py 2>&1 | tee -a "$log" || status=1
    python3 -m star_deploy run "a red circle on a blue background" "a small yellow triangle on black" --backend torch \
        "a green square on a white background" --device cuda --dtype float16 --cuda-graphs \
        --out "$OUT" --overwrite 2>&1 | tee -a "$log" || status=1
fi

if [[ "$what" == bench || "$what" == all || "$what" == device ]]; then
    # torch-compiled* compile the block (two graphs for the schedule) in their first warm-up, kept in
    # $compile_cache: the report's warmup_s shows the cold compile, then the warm start of the second variant.
    for run in ${RUNS:-1024-d30:1 1024-d30:4 512-d30:1 256-d16:1}; do
        p="${run%%:*}" b="${run##*:}"
        python3 -m star_deploy bench --random-weights --preset "$p" --batch-size "$b" --device cuda --dtype float16 \
            --backends "$backends" --warmup 2 --repeat "${REPEAT:-5}" --compile-cache "$compile_cache" \
            --json "$OUT/bench_${p}_b${b}.json" 2>&1 | tee -a "$log" || status=1
    done
fi

if [[ "$what" == fast || "$what" == all || "$what" == device ]]; then
    # Every fast-mode rung at 1024-d30 b1 (torch fp16, CUDA graphs), tokens and PSNR against exact, same run.
    timeout 420 python3 benchmarks/fast_modes.py --models 1024-d30 --backend torch --device cuda \
        --repeat "${REPEAT:-5}" --json "$OUT/fast_modes_1024-d30.json" 2>&1 | tee -a "$log" || status=1
fi
exit $status
