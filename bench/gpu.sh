#!/usr/bin/env bash
# The whole GPU benchmark run, sized for < 5 minutes of device time on one H100/H200:
#   1. install the carried wheels (bench/gpu_wheels.sh fetched them here),
#   2. bench/embed.py --device cuda: every ImageBind tower (HUGE, random weights), float32 batch 1
#      (the original's way) vs bfloat16 at batch 32 and 256 (flash attention through SDPA),
#   3. bench/gpu_search.py: exact search over 1M float16 vectors on the GPU vs faiss flat on the CPU.
# JSON lands in $OUT (the device tool's result folder) or bench/out/.
#
#   bash bench/gpu_wheels.sh                                  # here, once
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=420)   # on the device
#   GPU_BENCH_DRY=1 bash bench/gpu.sh                         # here, no GPU: the same steps, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
dry=${GPU_BENCH_DRY:-0}
# The carried wheels are built for the device's Python 3.12; a dry run here uses what is installed.
if [ "$dry" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi

if [ "$dry" = 1 ]; then
  device=cpu; embed_args=(--modalities imu,text --batches 1,2 --quick); search_args=(--n 20000 --single 20)
else
  device=cuda; embed_args=(--batches 1,32,256 --repeats 3); search_args=()
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.csv" || exit 1
fi

status=0
start=$SECONDS
timeout 200 python3 bench/embed.py --device "$device" --no-int8 "${embed_args[@]}" \
  > "$out/embed_gpu.json" 2> "$out/embed_gpu.log" || { status=1; echo "embed.py failed, see $out/embed_gpu.log"; }
echo "embed: $((SECONDS - start)) s"
start=$SECONDS
timeout 100 python3 bench/gpu_search.py --device "$device" "${search_args[@]}" \
  > "$out/search_gpu.json" 2> "$out/search_gpu.log" || { status=1; echo "gpu_search.py failed, see $out/search_gpu.log"; }
echo "search: $((SECONDS - start)) s"
tail -n 3 "$out"/*.log
exit $status
