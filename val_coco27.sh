#!/usr/bin/env bash
# Reproduce the paper's COCO-Stuff-27 numbers with a released IDDC checkpoint.
#
#   DATA_ROOT=/path/to/cocostuff bash val_coco27.sh [vits16|vits8] [more eval.py flags]
#   bash val_coco27.sh vits8 --data-root /path/to/cocostuff --precision bf16
#
# It is `val.sh cocostuff27 ARCH`: the released checkpoint $CHECKPOINT_DIR/cocostuff27_<arch>.pth (default:
# checkpoints/ of the project), downloaded from its Google Drive file when missing, or --checkpoint FILE;
# results in outputs/val_cocostuff27_<arch>_<protocol>[_crf][_bf16].json.
# Paper: S/16 59.9 Acc / 25.8 mIoU, S/8 58.3 / 25.5.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

arch=vits16
if [[ $# -gt 0 && ( "$1" == vits16 || "$1" == vits8 ) ]]; then
  arch=$1
  shift
fi
exec bash "$here/val.sh" cocostuff27 "$arch" "$@"
