# Sourced by train.sh and val.sh (and through them train_coco27.sh and val_coco27.sh): the names the
# recipes take, the one way they fail, the data root and the launcher of train.py.

# The registry's datasets (data/registry.py) and the backbones of modules/backbones.py, DINO's by their
# short names; tests/test_docs.py keeps both lists equal to the code's.
dataset_names="cocostuff27 cocostuff171 cityscapes27 potsdam3"
arch_names="vits16 vits8 vitb16 vitb8 dinov2_vits14 dinov2_vitb14 dinov2_vits14_reg dinov2_vitb14_reg"
arch_names+=" dinov3_vits16 dinov3_vits16plus dinov3_vitb16 dinov3_vitl16"
python_bin=${PYTHON:-python}

# The last line on stderr of a refused command, as every command of the project ends (exit 2).
fail() {
  echo "error: $*" >&2
  exit 2
}

# The protocol eval.py uses for a dataset when none is given (its default_protocol in data/).
default_protocol() {
  if [[ "$1" == potsdam3 ]]; then echo center320; else echo sliding; fi
}

# dino_vits16 and vits16 are both the recipe name vits16; other backbone names stay as they are.
short_arch() {
  local arch=${1#dino_vit}
  if [[ "$arch" =~ ^[sb][0-9]+$ ]]; then
    echo "vit$arch"
  else
    echo "$1"
  fi
}

# The value of a flag in the arguments that follow it (`--flag VALUE` or `--flag=VALUE`; the last one
# given wins, as argparse takes it), or nothing.
flag_value() {
  local flag=$1 value=""
  shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      "$flag") value=${2:-} ;;
      "$flag"=*) value=${1#*=} ;;
    esac
    shift
  done
  echo "$value"
}

# The backbone name of a recipe arch: vits16 is dino_vits16; other names stay as they are.
full_arch() {
  if [[ "$1" =~ ^vit[sb][0-9]+$ ]]; then
    echo "dino_$1"
  else
    echo "$1"
  fi
}

# Sets the array `data_args`: --data-root from DATA_ROOT, or nothing when the flags give one.
set_data_args() {
  data_args=()
  if [[ -n "${DATA_ROOT:-}" ]]; then
    data_args=(--data-root "$DATA_ROOT")
  elif [[ " $* " != *" --data-root"* ]]; then
    fail "DATA_ROOT is not set and no --data-root was given: set DATA_ROOT=/path/to/data or pass --data-root DIR (see docs/datasets.md)"
  fi
}

# Sets the array `launcher` that starts train.py on one process or through torchrun, from NPROC
# (processes on this machine), NNODES with NODE_RANK + MASTER_ADDR [+ MASTER_PORT] or
# RDZV_ENDPOINT [+ RDZV_ID] (several machines) and PYTHON (the interpreter).
set_launcher() {
  local nproc=${NPROC:-1}
  local nnodes=${NNODES:-1}
  if [[ "$nnodes" -gt 1 ]]; then
    if [[ -n "${RDZV_ENDPOINT:-}" ]]; then
      launcher=("$python_bin" -m torch.distributed.run --nnodes "$nnodes" --nproc_per_node "$nproc"
                --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-iddc}")
    elif [[ -n "${MASTER_ADDR:-}" && -n "${NODE_RANK:-}" ]]; then
      launcher=("$python_bin" -m torch.distributed.run --nnodes "$nnodes" --node_rank "$NODE_RANK"
                --nproc_per_node "$nproc" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
    else
      fail "NNODES=$nnodes needs NODE_RANK and MASTER_ADDR (optionally MASTER_PORT), or RDZV_ENDPOINT (see docs/training.md)"
    fi
  elif [[ "$nproc" -gt 1 ]]; then
    launcher=("$python_bin" -m torch.distributed.run --standalone --nproc_per_node "$nproc")
  else
    launcher=("$python_bin")
  fi
}
