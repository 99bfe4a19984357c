"""Two steps of the original code's training loop, replayed by the project's training step.

tests/golden/train_steps.{json,npz} were written by running the original ``train_every.py`` loop
(``train_one_epoch`` with its Adam optimisers, its poly ``LambdaLR`` schedulers stepped after each
epoch, the ``CrossContrastiveCorrelationLoss`` and the linear probe's cross-entropy) on CPU in fp32,
on 4 training images of the golden fixture (batch 4: one step an epoch), epochs 0 and 1 of 20, with
the golden fake ViT-S/16 checkpoint's backbone, head and classifier; tests/golden/README.md says how.
They hold each step's uint8 crops (the original's cv2 pipeline cut them), labels, learning rates,
negative shifts and loss values, the probe's initial weights, and the weights after both steps. Here
the project's ``engine.training.head_step`` takes the same two steps from the same state, at the
learning rates of ``poly_lr``, and must end where the original ended.
"""

import json

import numpy as np
import pytest
import torch

import engine.training as training
from data.transforms import normalize_uint8
from engine.training import HeadRun, TrainableHead, head_step, poly_lr, set_lr
from modules.checkpoint import load_iddc_model
from modules.loss import IDDCLoss
from modules.model import LinearProbe

EPOCHS, LR, PROBE_LR, POWER = 20, 5e-4, 1e-3, 0.9  # the paper's S/16 recipe


@pytest.fixture(scope="module")
def golden(golden_dir):
    return json.loads((golden_dir / "train_steps.json").read_text()), dict(np.load(golden_dir / "train_steps.npz"))


@pytest.fixture(scope="module")
def replayed(golden, fake_checkpoint):
    """(each step's logged values, the model, the probe) after the project's two steps."""
    summary, arrays = golden
    torch.manual_seed(0)
    model, _ = load_iddc_model(fake_checkpoint, patch_size=16)
    probe = LinearProbe(384, 27)
    probe.linear_head.weight.data.copy_(torch.from_numpy(arrays["probe_init/weight"]))
    probe.linear_head.bias.data.copy_(torch.from_numpy(arrays["probe_init/bias"]))
    head = TrainableHead(model)
    loss_fn = IDDCLoss(pos_threshold=0.2, neg_threshold=0.12, neg_weight=1.4, balance_weight=0.4, num_negatives=3)
    run = HeadRun(
        head,
        probe,
        loss_fn,
        torch.optim.Adam(head.parameters(), lr=LR),
        torch.optim.Adam(probe.parameters(), lr=PROBE_LR),
        None,
    )
    head.train()
    probe.train()
    logged = []
    with pytest.MonkeyPatch.context() as patch:
        for index, step in enumerate(summary["steps"]):
            epoch = index  # one step an epoch
            set_lr(run.optimizer, poly_lr(LR, epoch, EPOCHS, POWER))
            set_lr(run.probe_optimizer, poly_lr(PROBE_LR, epoch, EPOCHS, POWER))
            # The original drew these shifts from numpy's global generator; the project draws its own.
            patch.setattr(training, "negative_shifts", lambda *args, shifts=step["shifts"]: list(shifts))
            images = normalize_uint8(torch.from_numpy(arrays[f"step{index}/image"]))  # (4, 3, 224, 224)
            images_aug = normalize_uint8(torch.from_numpy(arrays[f"step{index}/image_aug"]))  # (4, 3, 224, 224)
            labels = torch.from_numpy(arrays[f"step{index}/label"]).long()  # (4, 224, 224)
            with torch.no_grad():
                features = model.vit(torch.cat((images, images_aug)))  # (8, 384, 14, 14)
            feats, feats_aug = features.split(4)
            values = head_step(run, features, feats, feats_aug, labels, 1, index, epoch, torch.device("cpu"), "fp32")
            values["lr"], values["probe_lr"] = (
                run.optimizer.param_groups[0]["lr"],
                run.probe_optimizer.param_groups[0]["lr"],
            )
            logged.append(values)
    return logged, model, probe


def test_each_step_logs_the_originals_losses_at_its_learning_rates(golden, replayed):
    summary, _ = golden
    logged, _, _ = replayed
    for index, (ours, theirs) in enumerate(zip(logged, summary["steps"], strict=True)):
        for name in ("lr", "probe_lr"):  # the poly schedule, epoch 0 then 1 of 20
            assert ours[name] == pytest.approx(theirs[name], rel=1e-12), (index, name)
        for name in ("pos", "neg", "balance", "entropy", "total", "probe"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-5), (index, name, ours[name], theirs[name])


def test_two_steps_end_at_the_originals_weights(golden, replayed):
    _, arrays = golden
    _, model, probe = replayed
    ours = {
        **{f"head_nonlinear/{key}": value for key, value in model.head_nonlinear.state_dict().items()},
        **{f"classifier/{key}": value for key, value in model.classifier.state_dict().items()},
        **{f"probe/{key.removeprefix('linear_head.')}": value for key, value in probe.state_dict().items()},
    }
    # Adam's first steps move a weight by about the learning rate whatever its gradient's size, so a
    # weight whose gradient rounding leaves near 0 may land a little apart: 2 of 147,456 entries of
    # head_nonlinear/2.weight land 1.3e-6 from the original's (the others within 1e-6).
    for name, value in ours.items():
        values = value.detach().numpy()
        if f"final/{name}" in arrays:
            np.testing.assert_allclose(values, arrays[f"final/{name}"], rtol=0, atol=1e-5, err_msg=name)
        else:  # the large convolutions: a fixed sample of entries and the sums of the whole tensor
            picked = arrays[f"final/{name}/indices"]
            np.testing.assert_allclose(values.reshape(-1)[picked], arrays[f"final/{name}/values"], rtol=0, atol=1e-5)
            as_double = values.astype(np.float64)
            expected_sum, expected_squares = arrays[f"final/{name}/sums"]
            assert as_double.sum() == pytest.approx(expected_sum, abs=2e-3), name
            assert (as_double**2).sum() == pytest.approx(expected_squares, rel=1e-6), name
