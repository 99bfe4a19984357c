#!/usr/bin/env bash
# Train IDDC on one of the benchmarks with its recipe (configs/train_<dataset>_<arch>.yaml).
#
#   DATA_ROOT=/path/to/data bash train.sh DATASET ARCH [more train.py flags]
#   DATA_ROOT=/path/to/cityscapes bash train.sh cityscapes27 vits8
#   NPROC=4 DATA_ROOT=/path/to/cocostuff bash train.sh cocostuff171 vits8     # 4 processes (GPUs)
#   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 NPROC=4 DATA_ROOT=... bash train.sh cityscapes27 vitb8   # 2 machines
#
# Recipes: cocostuff27 vits16|vits8, cocostuff171 vits16|vits8, cityscapes27 vits8|vitb8, potsdam3 vits8.
# Outputs go to the config's output_dir (outputs/train_<dataset>_<arch>/) unless --output-dir is given;
# add --resume to continue a run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage="usage: bash train.sh DATASET ARCH [train.py flags], DATASET ARCH one of:"
recipes=$(cd "$here/configs" && ls train_*.yaml | sed -e 's/^train_//' -e 's/\.yaml$//' -e 's/^coco27_/cocostuff27_/' | sed -e 's/_\([a-z0-9]*\)$/ \1/' | sort | paste -sd, - | sed -e 's/,/, /g')
if [[ $# -lt 2 ]]; then
  echo "train.sh: $usage $recipes" >&2
  exit 2
fi
dataset=$1
arch=$2
shift 2
# The COCO-Stuff-27 recipes keep their original names (train_coco27_<arch>.yaml).
config_name=${dataset/#cocostuff27/coco27}
config="$here/configs/train_${config_name}_${arch}.yaml"
if [[ ! -f "$config" ]]; then
  echo "train.sh: no recipe for '$dataset $arch' ($config); $usage $recipes" >&2
  exit 2
fi

data_args=()
if [[ -n "${DATA_ROOT:-}" ]]; then
  data_args=(--data-root "$DATA_ROOT")
elif [[ " $* " != *" --data-root"* ]]; then
  echo "train.sh: set DATA_ROOT=/path/to/data or pass --data-root DIR (see README, 'Datasets')" >&2
  exit 2
fi

caller=train.sh
source "$here/scripts/launcher.sh"
"${launcher[@]}" "$here/train.py" --config "$config" --dataset "$dataset" "${data_args[@]}" "$@"
