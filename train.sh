#!/usr/bin/env bash
# Train IDDC on one of the benchmarks with its recipe, configs/train_<DATASET>_<ARCH>.yaml: DATASET a
# name of the dataset registry (data/registry.py), ARCH a backbone name of modules/backbones.py, with
# vits16, vits8, vitb16, vitb8 short for dino_vits16, dino_vits8, dino_vitb16, dino_vitb8.
#
#   DATA_ROOT=/path/to/data bash train.sh DATASET ARCH [more train.py flags]
#   DATA_ROOT=/path/to/cityscapes bash train.sh cityscapes27 vits8
#   NPROC=4 DATA_ROOT=/path/to/cocostuff bash train.sh cocostuff171 vits8     # 4 processes (GPUs)
#   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 NPROC=4 DATA_ROOT=... bash train.sh cityscapes27 vitb8   # 2 machines
#
# Recipes: every configs/train_<DATASET>_<ARCH>.yaml; `bash train.sh` lists them (exit 0).
# Outputs go to the config's output_dir, outputs/train_<DATASET>_<ARCH>/ (the recipe's own name), under
# the current folder, unless --output-dir is given. A --backbone other than the recipe's trains into a
# folder that names the backbone and the recipe (outputs/train_cocostuff27_vitb16_with_vits16_recipe for `cocostuff27 vits16
# --backbone dino_vitb16`), so two runs never share a folder; add --resume to continue a run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

source "$here/scripts/common.sh"

usage="usage: bash train.sh DATASET ARCH [train.py flags], DATASET ARCH one of:"
# Dataset names hold no underscore: the first one of a recipe's name ends its DATASET.
recipes() {
  (cd "$here/configs" && ls train_*.yaml | sed -e 's/^train_//' -e 's/\.yaml$//' -e 's/_/ /' | sort | paste -sd, - | sed -e 's/,/, /g')
}
if [[ $# -eq 0 ]]; then
  echo "$usage $(recipes)"
  exit 0
fi
if [[ $# -lt 2 ]]; then
  fail "train.sh needs DATASET ARCH; $usage $(recipes)"
fi
dataset=$1
arch=$(short_arch "$2")
shift 2
if [[ "$dataset" == folder ]]; then
  backbone=$arch
  [[ "$arch" =~ ^vit[sb][0-9]+$ ]] && backbone=dino_$arch
  fail "no recipe for the folder dataset (your own images: docs/own_data.md); run train.py itself, e.g. python train.py --dataset folder --data-root DIR --backbone $backbone --num-clusters 8 --output-dir runs/mine"
fi
config="$here/configs/train_${dataset}_${arch}.yaml"
if [[ ! -f "$config" ]]; then
  fail "no recipe for '$dataset $arch' (configs/train_${dataset}_${arch}.yaml); $usage $(recipes)"
fi
set_data_args "$@"
set_launcher
output_args=()
backbone=$(flag_value --backbone "$@")
recipe_dir=$(sed -n 's/^output_dir: *\([^ #]*\).*/\1/p' "$config")
if [[ -z "$(flag_value --output-dir "$@")" ]]; then
  if [[ -n "$backbone" && "$(short_arch "$backbone")" != "$arch" ]]; then
    # Another backbone on this recipe: a folder that names both, which no recipe's own folder and no
    # other (recipe, backbone) pair can have.
    output_args=(--output-dir "${recipe_dir%"$arch"}$(short_arch "$backbone")_with_${arch}_recipe")
  elif [[ "$dataset" == cocostuff27 && -d "outputs/train_coco27_$arch" && ! -d "$recipe_dir" ]]; then
    # Before one rule named every recipe's folder, COCO-Stuff-27's were outputs/train_coco27_<arch>.
    echo "note: outputs/train_coco27_$arch is the old name of this recipe's folder, which is now $recipe_dir; rename it (or pass --output-dir outputs/train_coco27_$arch) to continue that run" >&2
  fi
fi
"${launcher[@]}" "$here/train.py" --config "$config" --dataset "$dataset" "${data_args[@]}" "${output_args[@]}" "$@"
