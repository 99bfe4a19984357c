"""The ``--precision`` option and what each value means on a GPU.

- ``bf16``: autocast to bfloat16 on any device (training's default on CUDA); the loss is still
  computed in float32 by its callers.
- ``fp32``: float32 arithmetic. For evaluation that means IEEE float32: PyTorch lets cuDNN
  convolutions use TensorFloat-32 by default (10 mantissa bits), which would make "fp32" results
  depend on the GPU generation, so :func:`inference_context` turns TF32 off for cuDNN
  convolutions and cuBLAS matmuls while the forwards run and restores the previous settings after.

docs/gpu.md says what this does and does not guarantee.
"""

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def autocast_context(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"--precision must be fp32 or bf16, got {precision!r}")


def inference_context(device, precision):
    """The context of evaluation forwards: bf16 autocast, or IEEE float32 (TF32 off) for fp32."""
    if precision == "fp32":
        return ieee_fp32()
    return autocast_context(device, precision)


def _has_fp32_precision_api():
    """torch >= 2.9 has per-backend ``fp32_precision`` settings beside the legacy ``allow_tf32`` flags."""
    return hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision")


def tf32_settings():
    """The settings :func:`ieee_fp32` changes, as a dict (for tests and reports)."""
    if _has_fp32_precision_api():
        settings = {
            "cuda.matmul": torch.backends.cuda.matmul.fp32_precision,
            "cudnn.conv": torch.backends.cudnn.conv.fp32_precision,
        }
        if hasattr(torch.backends, "mkldnn") and hasattr(torch.backends.mkldnn, "matmul"):
            settings["mkldnn.matmul"] = torch.backends.mkldnn.matmul.fp32_precision
    else:
        settings = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}
    try:
        settings["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    except RuntimeError:  # the user mixed the legacy and the new API: torch refuses to say
        settings["float32_matmul_precision"] = None
    return settings


@contextlib.contextmanager
def ieee_fp32():
    """IEEE float32 for CUDA matmuls and cuDNN convolutions while the block runs (TF32 off).

    The matmul precision is set through ``torch.set_float32_matmul_precision("highest")``, which
    keeps torch's legacy flag and the per-backend setting of torch >= 2.9 in agreement (cuBLAS
    refuses to run when the two disagree); convolutions through ``torch.backends.cudnn.conv``
    (torch >= 2.9) or the legacy ``torch.backends.cudnn.allow_tf32``. Every setting is put back as
    it was when the block ends, also on an exception. Settings are process-wide: no other thread
    should run CUDA work meanwhile.
    """
    before = tf32_settings()
    new_api = _has_fp32_precision_api()
    try:
        torch.set_float32_matmul_precision("highest")
        if new_api:
            torch.backends.cudnn.conv.fp32_precision = "ieee"
        else:
            torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        if before["float32_matmul_precision"] is not None:
            torch.set_float32_matmul_precision(before["float32_matmul_precision"])
        if new_api:
            # After the legacy call above, which rewrites the per-backend matmul settings too.
            torch.backends.cuda.matmul.fp32_precision = before["cuda.matmul"]
            torch.backends.cudnn.conv.fp32_precision = before["cudnn.conv"]
            if "mkldnn.matmul" in before:
                torch.backends.mkldnn.matmul.fp32_precision = before["mkldnn.matmul"]
        else:
            torch.backends.cudnn.allow_tf32 = before["cudnn.allow_tf32"]
