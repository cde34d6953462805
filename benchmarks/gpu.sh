#!/usr/bin/env bash
# GPU checks and figures: CUDA tests (golden parity, fp16 fidelity, CUDA graphs, torch.compile, the demo,
# the TensorRT engines), a CLI run with CUDA graphs, then `star-deploy bench` on CUDA for each preset and
# batch size. Every bench row carries its fidelity against a float32 generation of the same model
# (teacher-forced token agreement and image PSNR); targets: >= 99 % and >= 35 dB in fp16.
# Usage: benchmarks/gpu.sh [--dry-run] [tests|bench|fast|all|device]
# `fast` measures every fast-mode rung at 1024-d30 batch 1 (benchmarks/fast_modes.py), and on TensorRT where
# it is installed (an fp16 export, engines built with `build-engine --fast 2`, `star-deploy bench` per rung).
# `device` is the one-call check for a lent GPU, within 8 minutes from a tree trimmed by
# benchmarks/device_tree.sh: the CUDA tests (the demo's when the demo is there), the CPU proxies,
# then the 1024-d30 batch-1 bench of every torch variant (torch.compile cold on a fresh machine).
# --dry-run runs every step on the CPU at tiny sizes, so the script is checked without a GPU: the test
# steps only collect their tests, the CLI run draws with the golden model in float32, the bench times
# the tiny preset's torch variants without CUDA graphs or compilation, and a step's bound is 300 s.
# Env: OUT (results folder, default gpu-results), RUNS (preset:batch pairs, default
# "1024-d30:1 1024-d30:4 512-d30:1 256-d16:1"), BACKENDS (bench backends), REPEAT (5), STEP_TIMEOUT
# (seconds per step, default 900; 420 for `device`), COMPILE_CACHE (folder of compiled artefacts, kept between runs outside
# $OUT, which should hold only results; default ${XDG_CACHE_HOME:-~/.cache}/star-deploy/compile).
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [[ "${1:-}" == --dry-run ]]; then
    dry_run=1
    shift
fi
what="${1:-all}"
case "$what" in
    tests | bench | fast | all | device) ;;
    *)
        echo "usage: benchmarks/gpu.sh [--dry-run] [tests|bench|fast|all|device]" >&2
        exit 2
        ;;
esac
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$OUT/log.txt"
: >"$log"
status=0
compile_cache="${COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/star-deploy/compile}"
golden=(--weights tests/fixtures/tiny256 --resolution 256)
demo=()
[[ -f star_deploy/demo/weights/star.safetensors ]] && demo=(tests/test_demo.py)
if ((dry_run)); then
    device=cpu dtype=float32 step_timeout="${STEP_TIMEOUT:-300}" collect=(--collect-only)
    backends="${BACKENDS:-torch-eager,torch}" default_runs="tiny:1" repeat="${REPEAT:-1}" warmup=0
    run_model=("${golden[@]}") graphs=() fast_models=demo
else
    device=cuda dtype=float16 step_timeout="${STEP_TIMEOUT:-900}" collect=()
    backends="${BACKENDS:-torch-eager,torch,torch-cuda-graphs,torch-compiled,torch-compiled-cuda-graphs}"
    default_runs="1024-d30:1 1024-d30:4 512-d30:1 256-d16:1" repeat="${REPEAT:-5}" warmup=2
    run_model=() graphs=(--cuda-graphs) fast_models=1024-d30
    ((${#demo[@]})) || run_model=("${golden[@]}")
fi

step() {
    # One step, bounded in time, logged; a failure (or the bound) marks the run failed and goes on.
    echo "== $*" | tee -a "$log"
    timeout --kill-after=30 "$step_timeout" "$@" 2>&1 | tee -a "$log"
    local rc="${PIPESTATUS[0]}"
    if ((rc == 124 || rc == 137)); then
        echo "== over ${step_timeout} s (STEP_TIMEOUT), stopped: $*" | tee -a "$log"
        status=1
    elif ((rc != 0)); then
        echo "== exit $rc: $*" | tee -a "$log"
        status=1
    fi
}

if ((dry_run)); then
    echo "dry run on the CPU: no GPU is queried" | tee -a "$log"
else
    step nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
fi
step python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

if [[ "$what" == device ]] && ((!dry_run)); then
    default_runs="1024-d30:1" repeat="${REPEAT:-3}" step_timeout="${STEP_TIMEOUT:-420}"
fi

if [[ "$what" == device ]]; then
    step python3 -m pytest -q -p no:cacheprovider "${collect[@]}" tests/test_cuda.py "${demo[@]}" -k cuda
    step python3 -m pytest -q -p no:cacheprovider "${collect[@]}" -m tensorrt tests/test_engines.py
    step python3 benchmarks/cpu_proxies.py ops --json "$OUT/cpu_proxies_ops.json"
fi

if [[ "$what" == tests || "$what" == all ]]; then
    step python3 -m pytest -q -p no:cacheprovider "${collect[@]}" tests/test_cuda.py "${demo[@]}" -k cuda
    step python3 -m pytest -q -p no:cacheprovider "${collect[@]}" -m tensorrt tests/test_engines.py
    step python3 -m pytest -q -p no:cacheprovider "${collect[@]}" tests/test_loop.py tests/test_compile.py
    step python3 -m star_deploy run "a red circle on a blue background" "a small yellow triangle on black" \
        "a green square on a white background" --backend torch "${run_model[@]}" --device "$device" \
        --dtype "$dtype" "${graphs[@]}" --out "$OUT" --overwrite
fi

if [[ "$what" == bench || "$what" == all || "$what" == device ]]; then
    # torch-compiled* compile the block (two graphs for the schedule) in their first warm-up, kept in
    # $compile_cache: the report's warmup_s shows the cold compile, then the warm start of the second variant.
    for run in ${RUNS:-$default_runs}; do
        p="${run%%:*}" b="${run##*:}"
        step python3 -m star_deploy bench --random-weights --preset "$p" --batch-size "$b" --device "$device" \
            --dtype "$dtype" --backends "$backends" --warmup "$warmup" --repeat "$repeat" \
            --compile-cache "$compile_cache" --json "$OUT/bench_${p}_b${b}.json"
    done
fi

if [[ "$what" == fast || "$what" == all || "$what" == device ]]; then
    # Every fast-mode rung at 1024-d30 b1 (torch fp16, CUDA graphs), tokens and PSNR against exact, same run.
    step python3 benchmarks/fast_modes.py --models "$fast_models" --backend torch --device "$device" \
        --repeat "$repeat" --demo-seeds 1 --json "$OUT/fast_modes_${fast_models}.json"
fi

if [[ "$what" == fast || "$what" == all ]]; then
    # Every rung on TensorRT: the model's fp16 export, engines built for its preset's rung 2 (the pruned step too),
    # one bench per rung on the same engines. The dry run checks the export's readiness (the pruned step included)
    # and runs the same benches on ONNX Runtime.
    trt_dir="$(mktemp -d)/$fast_models"
    if ((dry_run)); then
        step cp -r star_deploy/demo/graphs "$trt_dir"
        step python3 -m star_deploy check "$trt_dir"
        trt_backend=onnxruntime
    elif python3 -c "import tensorrt" 2>/dev/null; then
        step python3 -c "import sys; from pathlib import Path; from star_deploy.core.config import preset
from star_deploy.export.artifacts import export_artifacts; from star_deploy.release.random_weights import random_model
export_artifacts(random_model(preset(sys.argv[1])), Path(sys.argv[2]), 'fp16')" "$fast_models" "$trt_dir"
        step python3 -m star_deploy build-engine "$trt_dir" --fast 2 --device "$device"
        trt_backend=tensorrt
    else
        echo "== TensorRT is not installed: the TensorRT rungs are not measured" | tee -a "$log"
        trt_backend=
    fi
    for level in 0 1 2; do
        [[ -n "$trt_backend" ]] || break
        step python3 -m star_deploy bench --artifacts "$trt_dir" --backends "$trt_backend" --device "$device" \
            --fast "$level" --warmup "$warmup" --repeat "$repeat" \
            --json "$OUT/fast_${trt_backend}_${fast_models}_fast${level}.json"
    done
    rm -rf "$(dirname "$trt_dir")"
fi
exit $status
