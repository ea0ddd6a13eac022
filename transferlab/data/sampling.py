"""Which images an epoch or a split holds: seeded class-stratified splits and samples, and the epoch order."""

import torch
from torch.utils.data import Dataset, Sampler, Subset


def stratified_split(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded split that keeps every class's share in both parts (>= 1 val image per class)."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in sorted(set(targets)):
        indices = [i for i, t in enumerate(targets) if t == label]
        order = torch.randperm(len(indices), generator=generator).tolist()
        n_val = min(max(1, round(len(indices) * val_fraction)), len(indices) - 1) if len(indices) > 1 else 0
        val += [indices[i] for i in order[:n_val]]
        train += [indices[i] for i in order[n_val:]]
    return sorted(train), sorted(val)


def stratified_sample(dataset: Dataset, per_class: int | None, seed: int) -> Dataset:
    """A seeded sample of at most ``per_class`` items of each class of ``dataset`` (an ImageFolder or a Subset of
    one), in the data set's order; ``None``: the whole data set."""
    if per_class is None:
        return dataset
    targets = ([dataset.dataset.targets[i] for i in dataset.indices] if isinstance(dataset, Subset)
               else dataset.targets)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(set(targets)):
        indices = [i for i, t in enumerate(targets) if t == label]
        chosen += [indices[i] for i in torch.randperm(len(indices), generator=generator)[:per_class].tolist()]
    return Subset(dataset, sorted(chosen))


class EpochShuffle(Sampler[int]):
    """A new random order every epoch that depends only on (seed, epoch), as DistributedSampler's does.

    So a resumed run sees epoch N in the same order as an uninterrupted one, whatever else
    drew from the global random generator before it. Lightning calls ``set_epoch`` each epoch.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
