"""Thin helpers over torch.distributed that also work in a single process."""

import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def is_initialized():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_initialized() else 0


def world_size():
    return dist.get_world_size() if is_initialized() else 1


def is_main():
    return rank() == 0


def init_from_env(device):
    """Start the process group when launched by torchrun (NCCL on GPUs, gloo on CPU).

    Returns the device this process should use.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return torch.device(device)
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    dist.init_process_group(backend=backend)
    return torch.device(device)


def all_reduce_sum(tensor):
    """Sum over processes (confusion matrices are summed, never averaged metrics)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor):
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def _all_reduce(tensor, op):
    """A reduced copy of ``tensor``, on its own device; NCCL reduces only CUDA tensors, so a CPU
    tensor (e.g. the stop-request flag) goes through this process's GPU there."""
    if not is_initialized():
        return tensor
    device = tensor.device
    if dist.get_backend() == dist.Backend.NCCL and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    reduced = tensor.to(device, copy=True)
    dist.all_reduce(reduced, op=op)
    return reduced.to(tensor.device)


def gather_batch(tensor):
    """Every process's ``tensor`` concatenated along dim 0 in rank order, without autograd."""
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_batch_with_grad(tensor):
    """As ``gather_batch``, differentiable: the gradient of each part flows back to its process
    (summed over the processes that used it)."""
    with warnings.catch_warnings():
        # torch deprecates this differentiable all_gather in favour of a private module's function;
        # it stays for its exact gradient (and bits) until a public replacement exists.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(dist_nn.all_gather(tensor))


def all_reduce_gradients(parameters):
    """Sum the gradients over the processes, in one flat buffer (the loss's ``objective`` is split
    so that the sum, not DDP's average, is the single-process gradient)."""
    if not is_initialized():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_parameters(parameters):
    """Rank 0's values everywhere, so the processes start (and, with summed gradients, stay) equal."""
    if is_initialized():
        for param in parameters:
            dist.broadcast(param.data, src=0)


def barrier():
    if is_initialized():
        dist.barrier()


def cleanup():
    if is_initialized():
        dist.destroy_process_group()
