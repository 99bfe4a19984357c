"""The ``--precision`` option: fp32, or bf16 autocast on any device."""

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def autocast_context(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"--precision must be fp32 or bf16, got {precision!r}")
