#!/usr/bin/env bash
# Evaluate an IDDC checkpoint on one of the benchmarks with the dataset's default protocol.
#
#   DATA_ROOT=/path/to/data bash val.sh DATASET ARCH [more eval.py flags]
#   DATA_ROOT=/path/to/cityscapes bash val.sh cityscapes27 vits8
#   DATA_ROOT=/path/to/cityscapes bash val.sh cityscapes27 vits8 --config configs/eval_coco27_peers.yaml   # peers' table
#
# DATASET is a registry name (data/registry.py), ARCH a backbone name of modules/backbones.py (vits16,
# vits8, vitb16, vitb8 short for dino_vits16, ...), as train.sh takes them. `--checkpoint FILE` evaluates
# FILE (your own: a best_model.pth or last_model.pth of train.sh). Without it, the paper's authors'
# released checkpoint is evaluated, $CHECKPOINT_DIR/cocostuff27_<arch>.pth (default: checkpoints/ of the
# project), downloaded when missing; they released COCO-Stuff-27 ViT-S/16 and S/8 only, so for any other
# pair --checkpoint FILE is required. Results go to
# outputs/val_<dataset>_<arch>_<protocol>[_crf][_bf16].json, so that other settings do not replace them.
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
set_data_args "$@"

# What names the results, and the checkpoint asked for: the flags, over the --config file's values.
protocol="" crf="" precision="" config="" own_checkpoint=""
flags=("$@")
for ((i = 0; i < ${#flags[@]}; i++)); do
  value=${flags[i + 1]:-}
  case "${flags[i]}" in
    --protocol) protocol=$value ;;
    --protocol=*) protocol=${flags[i]#*=} ;;
    --crf) crf=_crf ;;
    --precision) precision=$value ;;
    --precision=*) precision=${flags[i]#*=} ;;
    --config) config=$value ;;
    --config=*) config=${flags[i]#*=} ;;
    --checkpoint) own_checkpoint=$value ;;
    --checkpoint=*) own_checkpoint=${flags[i]#*=} ;;
  esac
done
if [[ -n "$config" && -f "$config" ]]; then  # eval.py reports a config it cannot read
  read -r config_protocol config_crf config_precision < <("$python_bin" -c '
import sys, yaml
try:
    values = yaml.safe_load(open(sys.argv[1])) or {}
except Exception:
    values = {}
values = values if isinstance(values, dict) else {}
print(values.get("protocol") or "-", "_crf" if values.get("crf") is True else "-", values.get("precision") or "-")
' "$config") || true
  [[ -n "$protocol" || "${config_protocol:--}" == - ]] || protocol=$config_protocol
  [[ -n "$crf" || "${config_crf:--}" == - ]] || crf=$config_crf
  [[ -n "$precision" || "${config_precision:--}" == - ]] || precision=$config_precision
fi
protocol=${protocol:-$(default_protocol "$dataset")}
output_json="outputs/val_${dataset}_${arch}_${protocol}${crf}$([[ "$precision" == bf16 ]] && echo _bf16 || true).json"

checkpoint_args=()
if [[ -n "$own_checkpoint" ]]; then
  echo "val.sh: evaluating $own_checkpoint"
elif [[ "$dataset" == cocostuff27 && ( "$arch" == vits16 || "$arch" == vits8 ) ]]; then
  checkpoint=${CHECKPOINT_DIR:-$here/checkpoints}/${dataset}_${arch}.pth
  if [[ ! -f "$checkpoint" ]]; then
    echo "val.sh: $checkpoint is missing; downloading the released checkpoint"
    "$python_bin" "$here/scripts/download_checkpoint.py" "$arch" --dest "$checkpoint" || exit 1
  fi
  echo "val.sh: evaluating the authors' released checkpoint $checkpoint (--checkpoint FILE evaluates your own)"
  checkpoint_args=(--checkpoint "$checkpoint")
elif [[ -f "$here/configs/train_${dataset}_${arch}.yaml" ]]; then
  fail "no released checkpoint exists for $dataset $arch: pass --checkpoint FILE, e.g. the best_model.pth" \
       "of 'bash train.sh $dataset $arch'"
else
  recipe=$(cd "$here/configs" && ls "train_${dataset}_"*.yaml | head -1 | sed -e "s/^train_${dataset}_//" -e 's/\.yaml$//')
  fail "no released checkpoint exists for $dataset $arch: pass --checkpoint FILE, e.g. the best_model.pth" \
       "of a recipe of $dataset with --backbone, 'bash train.sh $dataset $recipe --backbone $(full_arch "$arch")'" \
       "('bash train.sh' lists the recipes)"
fi

"$python_bin" "$here/eval.py" --dataset "$dataset" "${checkpoint_args[@]}" --expect-patch-size "$patch_size" \
  "${data_args[@]}" --output-json "$output_json" "$@"
