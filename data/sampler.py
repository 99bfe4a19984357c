"""The order of training samples: global batches, split between processes, resumable mid-epoch."""

import torch

from utils.errors import OptionError


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this process's share of each global batch as ``(epoch, index)`` keys.

    The epoch's order is ``randperm`` of the dataset from a generator seeded with ``seed + epoch``
    (as torch's DistributedSampler), cut into global batches of ``global_batch`` (the last
    incomplete one dropped). Process ``rank`` of ``world_size`` takes the contiguous slice
    ``[rank * B / N, (rank + 1) * B / N)`` of every global batch, so N processes together see
    exactly the batches one process would, in the same order.

    The epoch is part of every key, so dataset copies in persistent loader workers need no
    notification of a new epoch. ``set_epoch(epoch, start_batch)`` skips the first ``start_batch``
    batches, to resume an epoch where it stopped.
    """

    def __init__(self, num_items, global_batch, seed=0, rank=0, world_size=1):
        if global_batch % world_size:
            raise OptionError(
                f"--batch-size {global_batch} must be divisible by the number of processes ({world_size})"
            )
        if num_items < global_batch:
            raise OptionError(
                f"the training split has {num_items} images, fewer than --batch-size {global_batch} "
                "(batches are drop_last)"
            )
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.local_batch = global_batch // world_size
        self.offset = rank * self.local_batch
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch, start_batch=0):
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside the epoch's {self.batches_per_epoch} batches")
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self):
        return self.num_items // self.global_batch

    def __len__(self):
        return self.batches_per_epoch - self.start_batch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * self.global_batch + self.offset
            yield [(self.epoch, index) for index in order[first : first + self.local_batch]]
