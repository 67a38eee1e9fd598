#!/usr/bin/env bash
# Seed 002 on the demo at one equal budget (docs/self_guidance.md, "FD at an equal budget"): three C-EDMs
# that differ only in where their 20 conditions come from, each fine-tuned KIMG kimg from the shipped
# unconditional demo-uncond (small preset, 32 px, 300 kimg), label dropout 0.15 (the paper's):
#   sg-effnet : spherical k-means:20 on EfficientNet-Lite0 features (plain C-EDM conditions)
#   sg-offline: spherical k-means:20 on demo-uncond's own denoiser features (seed 002, sec. 4.1)
#   sg-online : self:20, prototypes learned online by Sinkhorn-Knopp (seed 002, sec. 4.2)
#   sg-uncond : no condition (the same 60 kimg more of unconditional training: the equal-budget baseline)
# then FD_EffNetLite0 (same N, same seeds) of each at w = 1 and 2 against demo-uncond and demo-kmeans20,
# and the AMI of each model's conditions against the 99 Unicode subgroups.
# Every training resumes from its newest checkpoint, so rerunning the script goes on where it stopped.
# Usage: CEDM_HOME=/some/home bash bench/self_guidance_fd.sh [effnet|offline|online|uncond|eval|all]
set -euo pipefail
KIMG=${KIMG:-60}
N=${N:-500}
export OMP_NUM_THREADS=1
: "${CEDM_HOME:?set CEDM_HOME}"
mkdir -p "$CEDM_HOME/logs"
common=(--preset small --resolution 32 --batch 32 --kimg "$KIMG" --lr-rampup 2 --checkpoint-kimg 2
        --sample-kimg 0 --init demo-uncond --threads 1 --resume)
cond=(--p-uncond 0.15)
what=${1:-all}
if [[ $what == effnet || $what == all ]]; then
  python -m cedm train demo "${common[@]}" "${cond[@]}" --condition skmeans:20 --backbone efficientnet_lite0 --out "sg-effnet$KIMG"
fi
if [[ $what == offline || $what == all ]]; then
  python -m cedm train demo "${common[@]}" "${cond[@]}" --condition skmeans:20 --backbone denoiser:demo-uncond --out "sg-offline$KIMG"
fi
if [[ $what == online || $what == all ]]; then
  # the network starts trained (demo-uncond), so a short warm-up (10 %) is enough for the head and prototypes
  python -m cedm train demo "${common[@]}" "${cond[@]}" --condition self:20 --self-warmup 0.1 --out "sg-online$KIMG"
fi
if [[ $what == uncond || $what == all ]]; then
  python -m cedm train demo "${common[@]}" --condition none --out "sg-uncond$KIMG"
fi
if [[ $what == eval || $what == all ]]; then
  python -m cedm eval "sg-effnet$KIMG" "sg-offline$KIMG" "sg-online$KIMG" "sg-uncond$KIMG" checkpoints/demo-kmeans20 \
      checkpoints/demo-uncond --workspace demo --n "$N" --guidance 1,2 --steps 12 --sampler dpmpp2m --offline-only \
      --json "$CEDM_HOME/logs/self_guidance_fd.json" --threads "${EVAL_THREADS:-1}"
  python - "$KIMG" <<'PY'
import sys
from cedm.labels import compare_labelings
from cedm.workspace import open_workspace
k = sys.argv[1]
ws = open_workspace(None, "demo")
for spec, kw in (("skmeans:20", {"backbone": "efficientnet_lite0"}),
                 ("skmeans:20", {"backbone": "denoiser:demo-uncond"}), (f"self:20@sg-online{k}", {})):
    r = compare_labelings(ws, spec, "gt", **kw)
    print(f"{spec} {kw}: against the 99 subgroups NMI {r['nmi']:.3f} AMI {r['ami']:.3f}")
PY
fi
