#!/usr/bin/env bash
# Evaluate an IDDC checkpoint on one of the benchmarks with the dataset's default protocol.
#
#   DATA_ROOT=/path/to/data bash val.sh DATASET ARCH [more eval.py flags]
#   DATA_ROOT=/path/to/cityscapes bash val.sh cityscapes27 vits8
#   DATA_ROOT=/path/to/cityscapes bash val.sh cityscapes27 vits8 --config configs/eval_coco27_peers.yaml   # peers' table
#
# The checkpoint is $CHECKPOINT_DIR/<dataset>_<arch>.pth (default: checkpoints/ of the project). The
# paper's authors released COCO-Stuff-27 checkpoints only: those are downloaded when missing; for
# the other datasets train one (bash train.sh DATASET ARCH) and copy its best_model.pth or
# last_model.pth there. Results go to outputs/val_<dataset>_<arch>.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage="usage: bash val.sh DATASET ARCH [eval.py flags]; DATASET: cocostuff27 cocostuff171 cityscapes27 potsdam3; ARCH: vits16 vits8 vitb16 vitb8"
if [[ $# -lt 2 ]]; then
  echo "val.sh: $usage" >&2
  exit 2
fi
dataset=$1
arch=$2
shift 2
case "$dataset" in cocostuff27|cocostuff171|cityscapes27|potsdam3) ;; *) echo "val.sh: unknown dataset '$dataset'; $usage" >&2; exit 2 ;; esac
case "$arch" in vits16|vits8|vitb16|vitb8) ;; *) echo "val.sh: unknown arch '$arch'; $usage" >&2; exit 2 ;; esac
checkpoint=${CHECKPOINT_DIR:-$here/checkpoints}/${dataset}_${arch}.pth

data_args=()
if [[ -n "${DATA_ROOT:-}" ]]; then
  data_args=(--data-root "$DATA_ROOT")
elif [[ " $* " != *" --data-root"* ]]; then
  echo "val.sh: set DATA_ROOT=/path/to/data or pass --data-root DIR (see docs/datasets.md)" >&2
  exit 2
fi

if [[ ! -f "$checkpoint" ]]; then
  if [[ "$dataset" == cocostuff27 && ( "$arch" == vits16 || "$arch" == vits8 ) ]]; then
    echo "val.sh: $checkpoint is missing; downloading the released checkpoint"
    python "$here/scripts/download_checkpoint.py" "$arch" --dest "$checkpoint" || exit 1
  else
    echo "val.sh: $checkpoint is missing; no released checkpoint exists for $dataset $arch: train one with" \
         "'bash train.sh $dataset $arch' and copy its best_model.pth or last_model.pth to $checkpoint" >&2
    exit 2
  fi
fi

python "$here/eval.py" --dataset "$dataset" --checkpoint "$checkpoint" --patch-size "${arch#vit[sb]}" "${data_args[@]}" \
  --output-json "outputs/val_${dataset}_${arch}.json" "$@"
