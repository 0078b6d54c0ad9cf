#!/bin/sh
# Runs its arguments on one GPU that no other worker replica has taken, so
# `docker compose up --scale worker=N` gives N workers N different GPUs.
# Compose gives every replica the same settings (all GPUs, one environment),
# so each replica claims a slot itself: it holds an flock on
# $T2I_GPU_SLOTS/gpuI for as long as it runs (the lock goes with the process,
# even on SIGKILL) and sets CUDA_VISIBLE_DEVICES=I. A CUDA_VISIBLE_DEVICES
# that is already set is kept: one worker pinned by hand.
set -eu
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    exec "$@"
fi
slots=${T2I_GPU_SLOTS:-/run/gpu-slots}
devices=${T2I_GPU_DEVICES:-/dev}
count=$(find "$devices" -maxdepth 1 -name 'nvidia[0-9]*' | wc -l)
if [ "$count" -eq 0 ]; then
    echo "one-gpu: no GPU in this container (no $devices/nvidiaN): is the NVIDIA Container Toolkit installed? Without a GPU use compose.cpu.yaml" >&2
    exit 1
fi
i=0
while [ "$i" -lt "$count" ]; do
    exec 9>"$slots/gpu$i"
    if flock -n 9; then
        export CUDA_VISIBLE_DEVICES="$i" CUDA_DEVICE_ORDER=PCI_BUS_ID
        echo "one-gpu: GPU $i of $count" >&2
        exec "$@"
    fi
    i=$((i + 1))
done
echo "one-gpu: all $count GPUs have a worker; scale to at most $count (docker compose up -d --scale worker=$count)" >&2
exit 1
