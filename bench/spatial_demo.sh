#!/usr/bin/env bash
# Seed 003 on the demo at one equal, small CPU budget (docs/spatial.md, "Measured on the demo"):
# fine-tune the shipped demo-kmeans20 C-EDM (skmeans:20 on efficientnet_lite0, small, 32 px) for KIMG kimg
# as an image-level, a box-spatial and a segments-spatial model (--init: the map channels start at zero), then
# mean layout IoU over N layouts (the demo's own self-boxes, same annotator for the samples) and
# FD_EffNetLite0 (same N, same seeds) of spatial vs image-level vs the shipped unconditional model.
# Usage: CEDM_HOME=/tmp/home-x bash bench/spatial_demo.sh [train|eval|all]; logs in $CEDM_HOME/logs.
set -euo pipefail
KIMG=${KIMG:-16}
N=${N:-200}
export OMP_NUM_THREADS=1
: "${CEDM_HOME:?set CEDM_HOME}"
mkdir -p "$CEDM_HOME/logs"
common=(--condition skmeans:20 --backbone efficientnet_lite0 --preset small --resolution 32 --batch 32
        --kimg "$KIMG" --lr-rampup 2 --checkpoint-kimg 4 --sample-kimg 0 --init demo-kmeans20 --threads 1)
what=${1:-all}
if [[ $what == train || $what == all ]]; then
  python -m cedm annotate demo --boxes --backbone efficientnet_lite0
  python -m cedm train demo "${common[@]}" --out "img-ft$KIMG"
  python -m cedm train demo "${common[@]}" --spatial box --spatial-backbone efficientnet_lite0 \
      --p-drop-class 0.1 --out "box-ft$KIMG"
  python -m cedm annotate demo --segments 8 --backbone efficientnet_lite0
  python -m cedm train demo "${common[@]}" --spatial segments:8 --spatial-backbone efficientnet_lite0 \
      --p-drop-class 0.1 --out "seg-ft$KIMG"
fi
if [[ $what == eval || $what == all ]]; then
  python -m cedm eval "box-ft$KIMG" "img-ft$KIMG" checkpoints/demo-kmeans20 checkpoints/demo-uncond --workspace demo --n "$N" \
      --guidance 2 --steps 12 --sampler dpmpp2m --layout-iou box --json "$CEDM_HOME/logs/spatial_demo_eval.json" \
      --threads 1
  python -m cedm eval "seg-ft$KIMG" "img-ft$KIMG" checkpoints/demo-uncond --workspace demo --n "$N" \
      --guidance 2 --steps 12 --sampler dpmpp2m --layout-iou segments:8 \
      --json "$CEDM_HOME/logs/spatial_demo_segments_eval.json" --threads 1
fi
