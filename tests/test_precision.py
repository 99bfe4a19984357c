"""The precision policy (utils/precision.py): fp32 evaluation runs with TF32 off and restores the
settings it found; bf16 is autocast. Checked through torch's flags, which exist on CPU builds too."""

import pytest
import torch

from engine.evaluation import cluster_logits, window_logits
from utils.precision import ieee_fp32, inference_context, tf32_settings

IEEE = {"cuda.matmul": "ieee", "cudnn.conv": "ieee", "float32_matmul_precision": "highest"}


def new_api():
    return hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision")


@pytest.fixture
def restore_flags():
    """Put torch's TF32 flags back as they were, whatever a test set."""
    matmul = torch.get_float32_matmul_precision()
    backends = (
        (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.mkldnn.matmul)
        if new_api()
        else ()
    )
    leaves = [(backend, backend.fp32_precision) for backend in backends]
    allow_tf32 = torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    for backend, value in leaves:
        backend.fp32_precision = value
    if not new_api():
        torch.backends.cudnn.allow_tf32 = allow_tf32


def legacy_tf32_on():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def new_api_tf32_on():
    if not new_api():
        pytest.skip("this torch has no fp32_precision settings")
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


@pytest.mark.parametrize("setup", [None, legacy_tf32_on, new_api_tf32_on], ids=["defaults", "legacy", "new-api"])
def test_ieee_fp32_turns_tf32_off_and_restores_the_settings(restore_flags, setup):
    if setup is not None:
        setup()
    before = tf32_settings()
    with ieee_fp32():
        inside = tf32_settings()
        assert torch.backends.cuda.matmul.allow_tf32 is False  # cuBLAS's own check of the two APIs agrees
    assert tf32_settings() == before
    if new_api():
        assert {key: inside[key] for key in IEEE} == IEEE
    else:
        assert inside["cudnn.allow_tf32"] is False and inside["float32_matmul_precision"] == "highest"


def test_ieee_fp32_restores_after_an_error(restore_flags):
    legacy_tf32_on()
    before = tf32_settings()
    with pytest.raises(RuntimeError, match="boom"), ieee_fp32():
        raise RuntimeError("boom")
    assert tf32_settings() == before and torch.backends.cuda.matmul.allow_tf32 is True


class RecordingModel(torch.nn.Module):
    """Returns (features, codes, logits) like IDDCModel and records the TF32 settings and the
    autocast state each forward saw."""

    num_classes = 3
    patch_size = 16

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images):
        self.seen.append((tf32_settings(), torch.is_autocast_enabled("cpu")))
        logits = images[:, :3, ::16, ::16]  # (B, 3, h, w)
        return images, images, logits


def test_fp32_evaluation_forwards_run_without_tf32(restore_flags):
    legacy_tf32_on()
    before = tf32_settings()
    model = RecordingModel()
    images = torch.zeros(2, 3, 224, 224)
    cluster_logits(model, images, "fp32", batch_size=1)
    window_logits(model, [images[0]], [[(0, 0)]], 224, True, "fp32", batch_size=1)
    assert len(model.seen) == 4
    for settings, autocast in model.seen:
        assert settings["float32_matmul_precision"] == "highest" and not autocast
        if new_api():
            assert settings["cudnn.conv"] == "ieee"
    assert tf32_settings() == before


def test_bf16_evaluation_is_autocast_and_leaves_tf32_alone(restore_flags):
    before = tf32_settings()
    model = RecordingModel()
    cluster_logits(model, torch.zeros(1, 3, 224, 224), "bf16", batch_size=1)
    ((settings, autocast),) = model.seen
    assert autocast and settings == before
    with pytest.raises(ValueError, match="--precision"):
        inference_context("cpu", "fp16")
