# Sourced by train_coco27.sh and train.sh: sets the array `launcher` that starts train.py on one
# process or through torchrun, from NPROC (processes on this machine), NNODES with NODE_RANK +
# MASTER_ADDR [+ MASTER_PORT] or RDZV_ENDPOINT [+ RDZV_ID] (several machines), PYTHON (interpreter).
# `caller` names the script in error messages.
nproc=${NPROC:-1}
nnodes=${NNODES:-1}
python_bin=${PYTHON:-python}
if [[ "$nnodes" -gt 1 ]]; then
  if [[ -n "${RDZV_ENDPOINT:-}" ]]; then
    launcher=("$python_bin" -m torch.distributed.run --nnodes "$nnodes" --nproc_per_node "$nproc"
              --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-iddc}")
  elif [[ -n "${MASTER_ADDR:-}" && -n "${NODE_RANK:-}" ]]; then
    launcher=("$python_bin" -m torch.distributed.run --nnodes "$nnodes" --node_rank "$NODE_RANK" --nproc_per_node "$nproc"
              --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
  else
    echo "$caller: NNODES=$nnodes needs NODE_RANK and MASTER_ADDR (optionally MASTER_PORT), or RDZV_ENDPOINT (see docs/training.md)" >&2
    exit 2
  fi
elif [[ "$nproc" -gt 1 ]]; then
  launcher=("$python_bin" -m torch.distributed.run --standalone --nproc_per_node "$nproc")
else
  launcher=("$python_bin")
fi
