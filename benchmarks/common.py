"""Timing helpers shared by the benchmarks."""

import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class TimedBackbone(torch.nn.Module):
    """Wraps the ViT and adds up the seconds spent in it (synchronised on CUDA)."""

    def __init__(self, vit):
        super().__init__()
        self.inner = vit
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, images):
        sync(images.device)
        start = time.perf_counter()
        out = self.inner(images)
        sync(images.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out
