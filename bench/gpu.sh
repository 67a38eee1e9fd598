#!/usr/bin/env bash
# The GPU rows of the benchmarks, on a lent GPU machine (the `device` tool: 30 min a session, 10 min a call).
# That machine has torch, timm, numpy, scipy, scikit-learn, safetensors, huggingface_hub, pillow and tqdm but
# no package index; cedm also needs diffusers, which travels as a wheel. faiss and the EfficientNet weights
# package are left behind (the repository plus wheels must stay under the 64 MiB a call may carry): on CUDA the
# kNN search runs in torch, the k-means rows are skipped (they are CPU rows), and EfficientNet is timed with
# random-init weights (same cost per image).
#
#   here, once:     bash bench/gpu.sh wheels           # -> .whl/ (git-ignored)
#   on the device:  run(command="bash bench/gpu.sh features", carry=[".whl"])    # then clustering, sampling
#
# Each part is sized to finish inside one 10-minute call and copies its JSON to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: bash bench/gpu.sh wheels|features|clustering|clustering-rest|curve|sampling}

if [ "$part" = wheels ]; then
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$(grep '^diffusers==' requirements.txt)" importlib_metadata
  du -sh .whl && exit 0
fi

[ -d .whl ] || { echo "no .whl/: run 'bash bench/gpu.sh wheels' here and carry .whl" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-bench/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, timm, diffusers; print('torch', torch.__version__, 'timm', timm.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"

case "$part" in
  features)         # DINO ViT-B/16 target: >= 4,000 img/s end to end from uint8 64x64
    python3 bench/features.py --gpu-only --repeats 2 --no-breakdown
    cp bench/results/features.json "$out/features_gpu.json" ;;
  clustering)       # target: the paper's TEMI (50 heads, 200 epochs) on N = 50k in < 5 min
    python3 bench/clustering.py --sizes 50000 --clusters 100 --out "$out/clustering_gpu_50k_c100.json" ;;
  clustering-rest)
    python3 bench/clustering.py --sizes 3400 --clusters 100 500 --out "$out/clustering_gpu_3k.json"
    python3 bench/clustering.py --sizes 50000 --clusters 500 --full-temi-budget 300 \
      --out "$out/clustering_gpu_50k_c500.json" ;;
  curve)            # issue 19: r_C of the paper schedule (50 heads) vs the CPU default (8 heads) on the demo's
                    # features at the same C, and the run time of each (CPU default within 0.02, same C_max)
    export CEDM_HOME=/tmp/cedm-home
    for sched in paper cpu; do
      python3 bench/clustering.py --curve --schedule "$sched" --cs 20 40 50 60 80 100 --out "$out/curve.json"
    done ;;   # -> $out/clustering_curve_paper_50h.json and clustering_curve_cpu_8h.json
  sampling)         # targets: paper preset >= 4x the reference and >= 35% MFU of the measured bf16 peak
    # compile (CUDA graphs) costs about a minute per shape: 3 batch sizes = 6 shapes (guided rows double)
    python3 bench/sampling.py --presets paper --batches 1,16,128 --reps 2
    cp bench/results/sampling.json "$out/sampling_gpu.json" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
