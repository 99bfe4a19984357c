#!/usr/bin/env bash
# Train IDDC on COCO-Stuff-27 with the paper's hyper-parameters.
#
#   DATA_ROOT=/path/to/cocostuff bash train_coco27.sh [vits16|vits8] [more train.py flags]
#   NPROC=4 DATA_ROOT=/path/to/cocostuff bash train_coco27.sh vits8     # 4 processes (GPUs) on this machine
#
# Several machines (torchrun's rendezvous; run the same command on every machine):
#   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 MASTER_PORT=29500 NPROC=4 DATA_ROOT=... bash train_coco27.sh vits8
#   NNODES=2 RDZV_ENDPOINT=host0:29400 [RDZV_ID=myrun] NPROC=4 DATA_ROOT=... bash train_coco27.sh vits8
# --batch-size stays the global batch, split over all NNODES * NPROC processes.
#
# Outputs (best_model.pth, last_model.pth, resume.pth, config.yaml, log.jsonl, train.log) go to
# outputs/train_cocostuff27_<arch>/ (named as the recipe, as every recipe's folder) unless --output-dir is
# given; add --resume to continue a run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

arch=vits16
if [[ $# -gt 0 && ( "$1" == vits16 || "$1" == vits8 ) ]]; then
  arch=$1
  shift
fi

exec bash "$here/train.sh" cocostuff27 "$arch" "$@"
