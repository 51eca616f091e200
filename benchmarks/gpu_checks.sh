#!/usr/bin/env bash
# Issue 16's GPU checks in one go, sized for a few minutes on one H100/H200:
#   1. the pipeline's index / backgrounds / masks stages on PARAMS's dataset (masks with the
#      backend PARAMS names: torch on CUDA), timed;
#   2. benchmarks/masks_precision.py: each precision and JPEG decoder against the exact fp32
#      reference (IoU, images/s); benchmarks/masks.py per precision:decoder in MASK_CONFIGS: masks
#      images/s end to end and marginal, IoU against rembg's fp32 CPU masks;
#   3. the train (both modes, PARAMS's epochs) and evaluate stages, timed; then
#      benchmarks/train_throughput.py for efficientnet_lite0 and bninception at 227 px,
#      full step (decoding and prepared, each inline and one batch ahead; also input only and
#      loader only) against model-only, and the embedding rate;
#   4. the GPU tests (pytest -m gpu).
# Each step goes on when one before it fails; everything is printed and, with OUT set, kept
# in $OUT/gpu_checks.log.
#
#   bash benchmarks/gpu_checks.sh PARAMS [COPIES] [REFERENCE_IMAGES]
# (DEVICE=cpu runs the same steps on the CPU, to try the script on a small PARAMS.)
set -u
params=${1:?usage: gpu_checks.sh PARAMS [COPIES] [REFERENCE_IMAGES]}
copies=${2:-8}
reference_images=${3:-300}
device=${DEVICE:-cuda}
log=${OUT:-/tmp}/gpu_checks.log
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
bgbias=(python3 -m bgbias --params "$params")
step() {  # one step, at most STEP_LIMIT seconds (default 150), timed
  echo "== $*"
  local start=$SECONDS
  timeout "${STEP_LIMIT:-150}" "$@" || echo "!! failed ($?): $*"
  echo "   $((SECONDS - start)) s"
}
{
  [ "$device" = cuda ] && step nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
  step "${bgbias[@]}" index
  step "${bgbias[@]}" backgrounds
  step "${bgbias[@]}" masks
  cat "$(dirname "$params")/reports/masks.json" 2>/dev/null
  root=$(python3 -c 'import sys; from bgbias.config import load_params; print(load_params(sys.argv[1]).selected.root)' "$params")
  step python3 benchmarks/masks_precision.py --source "$root/images" -n "${MASK_IMAGES:-100000}" --device "$device" \
    --batch-size "${MASK_BATCH:-64}"
  for config in ${MASK_CONFIGS:-fp32:pillow fp16:nvjpeg}; do  # precision:decoder
    step python3 benchmarks/masks.py --source "$root/images" -n "${MASK_IMAGES:-100000}" --copies "$copies" \
      --reference-images "$reference_images" --backend torch --device "$device" --batch-size "${MASK_BATCH:-64}" \
      --precision "${config%%:*}" --decoder "${config#*:}"
  done
  # The stages end to end on the GPU (input one batch ahead with loader workers), timed.
  step "${bgbias[@]}" train --mode base --no-track
  step "${bgbias[@]}" train --mode bgaugment --no-track
  step "${bgbias[@]}" evaluate --no-track
  for backbone in efficientnet_lite0 bninception; do
    step python3 benchmarks/train_throughput.py --params "$params" --backbone "$backbone" --crop 227 \
      --batch "${BATCH:-32}" --iterations "${ITERATIONS:-300}" --warmup "${WARMUP:-20}" --prepared
  done
  step python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
} 2>&1 | tee "$log"
