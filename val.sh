#!/usr/bin/env bash
# Evaluate an IDDC checkpoint on one of the benchmarks with the dataset's default protocol.
#
#   DATA_ROOT=/path/to/data bash val.sh DATASET ARCH [more eval.py flags]
#   DATA_ROOT=/path/to/cityscapes bash val.sh cityscapes27 vits8
#   DATA_ROOT=/path/to/cityscapes bash val.sh cityscapes27 vits8 --config configs/eval_coco27_peers.yaml   # peers' table
#
# DATASET is a registry name (data/registry.py), ARCH a backbone name of modules/backbones.py (vits16,
# vits8, vitb16, vitb8 short for dino_vits16, ...), as train.sh takes them. The checkpoint is
# $CHECKPOINT_DIR/<dataset>_<arch>.pth (default: checkpoints/ of the project). The paper's authors
# released COCO-Stuff-27 ViT-S/16 and S/8 checkpoints only: those are downloaded when missing; for the
# others train one (bash train.sh DATASET ARCH) and copy its best_model.pth or last_model.pth there.
# Results go to outputs/val_<dataset>_<arch>.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

source "$here/scripts/common.sh"

usage="usage: bash val.sh DATASET ARCH [eval.py flags]; DATASET: $dataset_names; ARCH: $arch_names (dino_* too)"
if [[ $# -lt 2 ]]; then
  fail "val.sh needs DATASET ARCH; $usage"
fi
dataset=$1
arch=$(short_arch "$2")
shift 2
[[ " $dataset_names " == *" $dataset "* ]] || fail "val.sh: unknown dataset '$dataset'; $usage"
[[ " $arch_names " == *" $arch "* ]] || fail "val.sh: unknown arch '$arch'; $usage"
[[ "$arch" =~ vit[a-z]+([0-9]+) ]]
patch_size=${BASH_REMATCH[1]}
checkpoint=${CHECKPOINT_DIR:-$here/checkpoints}/${dataset}_${arch}.pth
set_data_args "$@"

if [[ ! -f "$checkpoint" ]]; then
  if [[ "$dataset" == cocostuff27 && ( "$arch" == vits16 || "$arch" == vits8 ) ]]; then
    echo "val.sh: $checkpoint is missing; downloading the released checkpoint"
    "$python_bin" "$here/scripts/download_checkpoint.py" "$arch" --dest "$checkpoint" || exit 1
  elif [[ -f "$here/configs/train_${dataset}_${arch}.yaml" ]]; then
    fail "$checkpoint is missing; no released checkpoint exists for $dataset $arch: train one with" \
         "'bash train.sh $dataset $arch' and copy its best_model.pth or last_model.pth to $checkpoint"
  else
    recipe=$(cd "$here/configs" && ls "train_${dataset}_"*.yaml | head -1 | sed -e "s/^train_${dataset}_//" -e 's/\.yaml$//')
    fail "$checkpoint is missing; no released checkpoint exists for $dataset $arch, and no recipe either:" \
         "train one with a recipe of $dataset and --backbone, e.g. 'bash train.sh $dataset $recipe --backbone" \
         "$(full_arch "$arch")' ('bash train.sh' lists the recipes), and copy its best_model.pth or" \
         "last_model.pth to $checkpoint"
  fi
fi

"$python_bin" "$here/eval.py" --dataset "$dataset" --checkpoint "$checkpoint" --patch-size "$patch_size" \
  "${data_args[@]}" --output-json "outputs/val_${dataset}_${arch}.json" "$@"
