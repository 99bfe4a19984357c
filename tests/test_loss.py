"""Tests of modules.loss.IDDCLoss (docs/method.md#the-loss).

* golden: the two cases that the original code produced (tests/golden/loss.npz, loss.json);
* reference: a plain transcription of docs/method.md#the-loss (benchmarks/baselines.py) on more batch and
  map sizes, B = 2 included, and with several chunk sizes;
* the fixes over the original: empty masks, B = 1, invalid shifts, bf16 autocast.
"""

import json

import numpy as np
import pytest
import torch

from benchmarks.baselines import reference_loss
from engine.training import negative_shifts
from modules.loss import IDDCLoss, _chunks, _MaskedCorrelationSum

KEYS = ("pos", "neg", "balance", "entropy", "total")
GOLDEN_CASES = {"case_b5_14": (1, 3, 2), "case_b3_7": (2, 1, 2)}


def structured_inputs(batch, h, w, channels, clusters, seed, n_protos=6, noise=0.7):
    """Features = one of a few prototypes per position plus noise, so that both masks select a
    fair share of the pairs (pure noise would make nearly every feature cosine ~0)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(n_protos, channels, generator=g)
    idx0 = torch.randint(0, n_protos, (batch, h, w), generator=g)
    flip = torch.rand(batch, h, w, generator=g) < 0.2
    idx1 = torch.where(flip, torch.randint(0, n_protos, (batch, h, w), generator=g), idx0)
    f0 = protos[idx0].permute(0, 3, 1, 2) + noise * torch.randn(batch, channels, h, w, generator=g)  # (B, C, h, w)
    f1 = protos[idx1].permute(0, 3, 1, 2) + noise * torch.randn(batch, channels, h, w, generator=g)  # (B, C, h, w)
    z0 = 1.5 * torch.randn(batch, clusters, h, w, generator=g)  # (B, K, h, w)
    z1 = 1.5 * torch.randn(batch, clusters, h, w, generator=g)  # (B, K, h, w)
    return f0, f1, z0, z1


def run_with_grads(fn, f0, f1, z0, z1):
    z0 = z0.detach().clone().requires_grad_(True)
    z1 = z1.detach().clone().requires_grad_(True)
    out = fn(f0, f1, z0, z1)
    out["total"].backward()
    return out, z0.grad, z1.grad


# ----------------------------------------------------------------------------- golden
@pytest.fixture(scope="module")
def golden(golden_dir):
    npz = np.load(golden_dir / "loss.npz")
    meta = json.loads((golden_dir / "loss.json").read_text())
    return npz, meta


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_values_and_gradients(golden, case):
    npz, meta = golden
    shifts = GOLDEN_CASES[case]
    assert tuple(meta["cases"][case]["neg_rand_idx"]) == shifts
    names = ("raw_fea0", "raw_fea1", "fine_code0", "fine_code1")
    f0, f1, z0, z1 = (torch.from_numpy(npz[f"{case}/{k}"]) for k in names)
    out, g0, g1 = run_with_grads(lambda *a: IDDCLoss()(*a, neg_shifts=shifts), f0, f1, z0, z1)

    got = np.array([out[k].item() for k in KEYS])
    np.testing.assert_allclose(got, npz[f"{case}/values"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(g0.numpy(), npz[f"{case}/grad_fine_code0"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(g1.numpy(), npz[f"{case}/grad_fine_code1"], rtol=0, atol=1e-8)
    assert int(out["n_pos"]) == meta["cases"][case]["n_pos_selected"]
    assert out["n_neg_per_shift"].tolist() == meta["cases"][case]["n_neg_selected_per_shift"]
    assert out["neg_shifts"] == shifts
    for k in KEYS:
        assert out[k].dtype == torch.float32 and out[k].dim() == 0


def test_golden_weights_match_total_formula(golden):
    npz, _ = golden
    pos, neg, bal, _, total = npz["case_b5_14/values"]
    loss = IDDCLoss()  # defaults: 1.4, 0.4 (S/16) and t+ = 0.2, t- = 0.12
    assert (loss.pos_threshold, loss.neg_threshold, loss.neg_weight, loss.balance_weight) == (0.2, 0.12, 1.4, 0.4)
    np.testing.assert_allclose(pos + 1.4 * neg + 0.4 * bal / 50, total, rtol=1e-6)


# ----------------------------------------------------------------------------- reference
REF_CASES = [
    # B, h, w, C, K, shifts, chunk_size
    (2, 5, 5, 17, 4, (1, 1, 1), None),
    (2, 6, 9, 33, 7, (1, 1, 1), 1),
    (4, 6, 9, 40, 11, (1, 2, 3), None),
    (4, 5, 5, 23, 5, (3, 3, 1), 3),
    (7, 14, 14, 64, 27, (1, 5, 3), None),
    (7, 14, 14, 48, 13, (2, 6, 4), 2),
    (5, 7, 6, 29, 9, (4, 1, 2), 1),
]


@pytest.mark.parametrize("batch,h,w,channels,clusters,shifts,chunk", REF_CASES)
def test_matches_spec_transcription(batch, h, w, channels, clusters, shifts, chunk):
    inputs = structured_inputs(batch, h, w, channels, clusters, seed=batch * 1000 + h * 10 + w)
    ours, g0, g1 = run_with_grads(lambda *a: IDDCLoss(chunk_size=chunk)(*a, neg_shifts=shifts), *inputs)
    ref, r0, r1 = run_with_grads(lambda *a: reference_loss(*a, shifts), *inputs)
    assert int(ours["n_pos"]) > 0 and int(ours["n_neg"]) > 0, "the inputs should select pairs in both masks"
    for k in KEYS:
        torch.testing.assert_close(ours[k], ref[k].detach(), rtol=1e-5, atol=1e-7, msg=k)
    scale = max(r0.abs().max().item(), r1.abs().max().item())
    torch.testing.assert_close(g0, r0, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(g1, r1, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("t_pos,t_neg", [(0.15, 0.28), (-0.05, 0.3)])  # t+ < 1e-8: the general (mask) path
def test_non_default_hyperparameters_match_transcription(t_pos, t_neg):
    inputs = structured_inputs(4, 6, 6, 32, 8, seed=7)
    shifts = (1, 2, 3, 2)
    kw = dict(t_pos=t_pos, t_neg=t_neg, w0=0.38, w1=0.22)
    loss = IDDCLoss(pos_threshold=t_pos, neg_threshold=t_neg, neg_weight=0.38, balance_weight=0.22, num_negatives=4)
    ours, g0, _ = run_with_grads(lambda *a: loss(*a, neg_shifts=shifts), *inputs)
    ref, r0, _ = run_with_grads(lambda *a: reference_loss(*a, shifts, **kw), *inputs)
    for k in KEYS:
        torch.testing.assert_close(ours[k], ref[k].detach(), rtol=1e-5, atol=1e-7, msg=k)
    torch.testing.assert_close(g0, r0, rtol=0, atol=1e-5 * r0.abs().max().item())


def test_complementary_shifts_give_the_same_term():
    """s and B - s select the same pairs (transposed), which the implementation relies on."""
    inputs = structured_inputs(5, 6, 6, 32, 8, seed=3)
    a = reference_loss(*inputs, (2, 2, 2))["neg"]
    b = reference_loss(*inputs, (3, 3, 3))["neg"]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("batch", [2, 3, 5, 16])
def test_chunks_cover_each_row_once_with_its_partner(batch):
    shares = [(0, batch), (0, batch // 2), (batch // 2, batch), (1, batch)]  # the batch, or a process's share of it
    for shift in range(batch):
        for chunk in (1, 2, 3, 7, 100):
            for first, last in shares:
                ranges = _chunks(batch, shift, chunk, (first, last))
                rows = [b for start, stop, _ in ranges for b in range(start, stop)]
                partners = [p for start, stop, p_start in ranges for p in range(p_start, p_start + stop - start)]
                assert rows == list(range(first, last))
                assert partners == [(b + shift) % batch for b in rows]
                assert all(0 < stop - start <= chunk for start, stop, _ in ranges)


def test_custom_function_gradcheck():
    """The hand-written backward of the masked correlation sum, in float64 (masks fixed)."""
    g = torch.Generator().manual_seed(11)
    batch, n, c, k = 3, 5, 6, 4
    u = torch.nn.functional.normalize(torch.randn(batch, c, n, generator=g, dtype=torch.float64), dim=1)  # (B, C, N)
    u_other = torch.nn.functional.normalize(torch.randn(batch, c, n, generator=g, dtype=torch.float64), dim=1)
    pa = torch.rand(batch, n, k, generator=g, dtype=torch.float64, requires_grad=True)  # (B, N, K)
    pb = torch.rand(batch, k, n, generator=g, dtype=torch.float64, requires_grad=True)  # (B, K, N)
    for ub, shift, positive, thr in ((u_other, 0, True, -0.1), (u, 1, False, 0.2), (u, 2, False, 0.3)):

        def fn(a, b, ub=ub, shift=shift, positive=positive, thr=thr):
            # chunk 2 with B = 3: exercises the split at the wrap-around point too
            return _MaskedCorrelationSum.apply(u.transpose(1, 2), ub, a, b, shift, positive, thr, 2, True, (0, batch))[
                0
            ]

        assert torch.autograd.gradcheck(fn, (pa, pb), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- fixes over the original
def test_empty_masks_give_zero_terms_and_counts():
    inputs = structured_inputs(3, 5, 5, 16, 6, seed=5)
    loss = IDDCLoss(pos_threshold=1.5, neg_threshold=-1.5)  # |cosine| <= 1: nothing is selected
    out, g0, g1 = run_with_grads(lambda *a: loss(*a, neg_shifts=(1, 2, 1)), *inputs)
    assert out["pos"].item() == 0.0 and out["neg"].item() == 0.0
    assert int(out["n_pos"]) == 0 and int(out["n_neg"]) == 0 and out["n_neg_per_shift"].tolist() == [0, 0, 0]
    for k in KEYS:
        assert torch.isfinite(out[k]), k
    torch.testing.assert_close(out["total"], 0.4 * out["balance"] / 50)
    assert torch.isfinite(g0).all() and torch.isfinite(g1).all()


def test_batch_of_two_uses_shift_one():
    inputs = structured_inputs(2, 5, 5, 16, 6, seed=9)
    out = IDDCLoss()(*inputs, neg_shifts=negative_shifts(seed=0, step=0, batch=2))  # what training passes
    assert out["neg_shifts"] == (1, 1, 1)
    torch.testing.assert_close(out["total"], reference_loss(*inputs, (1, 1, 1))["total"], rtol=1e-5, atol=1e-7)


def test_batch_of_one_raises():
    inputs = structured_inputs(1, 4, 4, 8, 3, seed=1)
    with pytest.raises(ValueError, match="at least 2"):
        IDDCLoss()(*inputs, neg_shifts=(1, 1, 1))


@pytest.mark.parametrize(
    "shifts", [(0, 1, 2), (1, 4, 2), (1, 2), (1, 2, 3, 1), (1, 2.5, 3), (True, 1, 1), 3, (-1, 1, 1)]
)
def test_invalid_shifts_raise(shifts):
    inputs = structured_inputs(4, 4, 4, 8, 3, seed=2)
    with pytest.raises(ValueError):
        IDDCLoss()(*inputs, neg_shifts=shifts)


def test_shifts_as_numpy_or_tensor():
    inputs = structured_inputs(4, 4, 4, 8, 3, seed=2)
    a = IDDCLoss()(*inputs, neg_shifts=np.array([1, 3, 2]))
    b = IDDCLoss()(*inputs, neg_shifts=torch.tensor([1, 3, 2]))
    assert a["neg_shifts"] == b["neg_shifts"] == (1, 3, 2)
    torch.testing.assert_close(a["total"], b["total"])


@pytest.mark.parametrize("bad", ["feats_aug", "logits_aug", "logits_batch", "logits_map", "ndim", "int"])
def test_shape_and_type_checks(bad):
    f0, f1, z0, z1 = structured_inputs(3, 4, 5, 8, 3, seed=4)
    if bad == "feats_aug":
        f1 = f1[:, :, :, :4]
    elif bad == "logits_aug":
        z1 = z1[:, :2]
    elif bad == "logits_batch":
        z0, z1 = z0[:2], z1[:2]
    elif bad == "logits_map":
        z0, z1 = z0[:, :, :3], z1[:, :, :3]
    elif bad == "ndim":
        f0, f1 = f0.flatten(2), f1.flatten(2)
    elif bad == "int":
        z0 = z0.long()
    with pytest.raises((ValueError, TypeError)):
        IDDCLoss()(f0, f1, z0, z1, neg_shifts=(1, 2, 1))


def test_constructor_checks():
    with pytest.raises(ValueError):
        IDDCLoss(num_negatives=0)
    with pytest.raises(ValueError):
        IDDCLoss(chunk_size=0)


def test_bf16_autocast_computes_in_fp32():
    f0, f1, z0, z1 = (t.bfloat16() for t in structured_inputs(4, 6, 6, 32, 8, seed=6))
    shifts = (1, 2, 3)
    z0b = z0.clone().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = IDDCLoss()(f0, f1, z0b, z1, neg_shifts=shifts)
    out["total"].backward()
    upcast = (f0.float(), f1.float(), z0.float(), z1.float())
    ref, r0, _ = run_with_grads(lambda *a: IDDCLoss()(*a, neg_shifts=shifts), *upcast)
    for k in KEYS:
        assert out[k].dtype == torch.float32, k
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-8, msg=k)
    assert z0b.grad.dtype == torch.bfloat16
    torch.testing.assert_close(z0b.grad.float(), r0.bfloat16().float())


def test_no_gradient_into_features_and_no_grad_mode():
    f0, f1, z0, z1 = structured_inputs(3, 4, 4, 8, 5, seed=10)
    f0.requires_grad_(True)
    z0.requires_grad_(True)
    out = IDDCLoss()(f0, f1, z0, z1, neg_shifts=(1, 1, 1))
    out["total"].backward()
    assert f0.grad is None and z0.grad is not None
    with torch.no_grad():
        out2 = IDDCLoss()(f0, f1, z0, z1, neg_shifts=(1, 1, 1))
    assert not out2["total"].requires_grad
    torch.testing.assert_close(out2["total"], out["total"].detach())
