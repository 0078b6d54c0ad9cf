#!/usr/bin/env bash
# The session's GPU check, as one command on a CUDA machine, from the project root:
#   bash app/bench/gpu_check.sh [OUT_DIR]
# Full SD 2.1 768-v architecture (random weights), fp16, 768x768, 25 steps, in three parts:
#   paths:   our paths (engine, http, sdapi) next to plain diffusers, load time and peak memory per path;
#   modes:   peak VRAM per engine mode (txt2img, img2img, inpaint, hires fix to 1536, upscale, two ControlNets),
#            also under a 15 GB cap (a Colab T4's memory), each mode in a fresh process;
#   options: the speedup options, each in its own process;
#   noise:   CUDA's torch.randn against the Philox port (A1111's "GPU"/"NV" noise) and the A1111-fidelity
#            tests on the GPU (tests/test_sampling_rng.py's CUDA tests; needs pytest and k-diffusion).
#   fast:    the fast modes (DeepCache, ToMe, fewer steps: app/bench/fast.py) against the full run on the engine,
#            interleaved, with seconds per image and the pixel difference from the full run (about 2 minutes;
#            FAST_MODES picks them, default: app.bench.fast.DEFAULT_FAST_MODES).
#   compile: the compiled UNet (app/bench/compiled.py) started twice with one compile cache, each start with
#            empty Inductor/Triton caches: a cold start, then one from the cache; first image (eager while
#            compiling), compile seconds, eager vs compiled seconds per image, max pixel difference (JSON in
#            OUT_DIR/compile-cold.json, compile-cached.json; about 3-5 minutes: run it as its own command).
# PARTS picks and orders them (default "paths modes options"; all three take about 12-14 minutes, so
# under a 10-minute limit per command run them as two commands, e.g. PARTS="paths modes" then
# PARTS=options). Each part writes its section of docs/benchmarks.md and is copied to OUT_DIR at once,
# so a part cut off by a time limit leaves the ones before it. BENCH_ARGS overrides the model settings
# (CPU dry run: BENCH_ARGS="--model demo --size 64 --steps 2 --device cpu").
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
read -r -a base <<< "${BENCH_ARGS:---model sd21 --device cuda --size 768 --steps 25}"
read -r -a parts <<< "${PARTS:-paths modes options}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$out/gpu.txt" 2>&1
python -c 'import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)' \
    >> "$out/gpu.txt" 2>&1
cp docs/benchmarks.md "$out/benchmarks.md"
for part in "${parts[@]}"; do
    case "$part" in
    paths)
        timeout "${PATHS_SECONDS:-300}" python -m app.bench "${base[@]}" --runs "${RUNS:-5}" --options '' \
            --out docs/benchmarks.md --out "$out/paths.json" 2>&1 | tee "$out/paths.log" ;;
    modes)
        timeout "${MODES_SECONDS:-300}" python -m app.bench "${base[@]}" --runs 1 --paths engine --no-memory \
            --options '' --option-runs "${MODE_RUNS:-2}" --modes "${MODES:-txt2img,img2img,inpaint,hires,upscale,controlnet}" \
            --vram-limit-gb 15 --out docs/benchmarks.md --section "${MODES_SECTION:-cuda-sd21-modes}" \
            --out "$out/modes.json" 2>&1 | tee "$out/modes.log" ;;
    options)
        timeout "${OPTIONS_SECONDS:-270}" python -m app.bench "${base[@]}" --runs 1 --paths plain --no-memory \
            --options "${OPTIONS:-sdpa,no_sdpa,channels_last,fused_qkv,channels_last+fused_qkv,compile,vae_tiling,attention_slicing,cpu_offload}" \
            --out docs/benchmarks.md --section cuda-sd21-options --out "$out/options.json" 2>&1 | tee "$out/options.log" ;;
    fast)
        timeout "${FAST_SECONDS:-300}" python -m app.bench "${base[@]}" --runs "${FAST_RUNS:-3}" --paths '' --no-memory \
            --options '' --fast-modes "${FAST_MODES:-default}" --out docs/benchmarks.md --section cuda-sd21-fast-modes \
            --out "$out/fast.json" 2>&1 | tee "$out/fast.log" ;;
    noise)
        timeout "${NOISE_SECONDS:-120}" python -m pytest -q -p no:cacheprovider tests/test_sampling_rng.py -k cuda -rA \
            2>&1 | tee "$out/noise.log" ;;
    compile)
        rm -rf "$out/compile-cache"
        for start in cold cached; do
            TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d) timeout "${COMPILE_SECONDS:-270}" \
                python -m app.cli.bench_compiled "${base[@]}" --runs "${COMPILE_RUNS:-3}" --cache-dir "$out/compile-cache" \
                > "$out/compile-$start.json" 2> "$out/compile-$start.log"
            cat "$out/compile-$start.json"
        done ;;
    *) echo "gpu_check: unknown part $part (paths, modes, options, fast, noise, compile)" >&2; exit 2 ;;
    esac
    cp docs/benchmarks.md "$out/benchmarks.md"
done
