"""The paper's training-data mixture: dataset families drawn by weight, seeded and reproducible.

Official ``MixedTrainingDataset`` (LeapLabTHU/GSVA at 618dc79, ``data/dataset.py``): a family is drawn with probability
proportional to its weight (paper: semantic segmentation 9, referring segmentation 6, VQA 3, ReasonSeg 1), a dataset
uniformly within the family, then a record uniformly within the dataset; the index asked for is ignored and nothing is
seeded.

Here every draw is a pure function of ``(seed, position)``: item ``i`` of the mixture is the same whichever process,
worker or resumed run asks for it, so a run is reproducible and resumes exactly (the sampler position is the data
state). A record that fails to load is logged and replaced by a deterministic redraw; :attr:`MixtureDataset.failures`
counts them (per process). A dataset with a ``sample(index, rng)`` method (the conversation datasets) gets a
generator seeded by the draw, so the same record drawn twice is asked about differently. :class:`FullPassDataset` is the fine-tuning mode: one epoch = every record of every
dataset once, in a seeded order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..errors import UserError

__all__ = ["PAPER_FAMILY_WEIGHTS", "MixtureDataset", "FullPassDataset", "MixtureError"]

logger = logging.getLogger(__name__)

PAPER_FAMILY_WEIGHTS = {"sem_seg": 9.0, "refer_seg": 6.0, "vqa": 3.0, "reason_seg": 1.0}
"""The paper's family weights (its text and Table A3: SemSeg 9 : RES 6 : VQA 3 : ReasonSeg 1; the official script's
default ``--sample_rates`` is 9,3,3,1)."""


class MixtureError(UserError, RuntimeError):
    """The mixture is misconfigured, or too many consecutive records failed to load."""


class MixtureDataset(Dataset):
    """``length`` items drawn from ``families`` ({name: [dataset, ...]}) with ``weights`` ({name: weight > 0}).

    Each dataset is any map-style dataset (``len`` and ``[index]``). Raises :class:`MixtureError` for an empty or
    unweighted family, and, at access, after ``max_retries`` consecutive failed records.
    """

    def __init__(self, families: Mapping[str, Sequence], weights: Mapping[str, float], length: int, seed: int = 0,
                 max_retries: int = 20) -> None:
        names = sorted(families)
        if set(names) != set(weights):
            raise MixtureError(f"families {names} and weights {sorted(weights)} name different sets")
        for name in names:
            if not families[name] or any(len(d) == 0 for d in families[name]):
                raise MixtureError(f"family {name!r} has no dataset or an empty one")
            if not weights[name] > 0:
                raise MixtureError(f"family {name!r} needs a weight > 0, got {weights[name]}")
        if length < 1:
            raise MixtureError("length must be >= 1")
        self.names = names
        self.families = {n: list(families[n]) for n in names}
        total = sum(weights[n] for n in names)
        self.probabilities = np.array([weights[n] / total for n in names])
        self.length, self.seed, self.max_retries = length, seed, max_retries
        self.failures = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """No-op: every item is already a distinct draw (a run is one pass over ``length`` items)."""

    def draw(self, index: int, attempt: int = 0) -> tuple[str, int, int]:
        """(family, dataset number within the family, record index) of item ``index`` (``attempt`` > 0: redraws)."""
        rng = np.random.default_rng([self.seed, index, attempt])
        family = self.names[int(rng.choice(len(self.names), p=self.probabilities))]
        datasets = self.families[family]
        k = int(rng.integers(len(datasets)))
        return family, k, int(rng.integers(len(datasets[k])))

    def __getitem__(self, index: int):
        for attempt in range(self.max_retries + 1):
            family, k, record = self.draw(index, attempt)
            dataset = self.families[family][k]
            try:
                if hasattr(dataset, "sample"):  # conversation datasets: the draw also seeds the record's choices
                    item = dataset.sample(record, random.Random(f"mix-{self.seed}-{index}-{attempt}"))
                else:
                    item = dataset[record]
                _note_skipped(item, attempt)
                return item
            except Exception as exc:  # noqa: BLE001 - a bad record must not kill a long run
                self.failures += 1
                logger.warning("skipping %s dataset %d record %d (%s: %s); %d failed records so far", family, k,
                               record, type(exc).__name__, exc, self.failures)
        raise MixtureError(f"{self.max_retries + 1} consecutive records failed to load at item {index}; "
                           "check the data (the log names each one)")


def _note_skipped(item, attempt: int) -> None:
    """Record in the item's ``meta`` how many failed records it replaces (DataLoader workers cannot update a
    counter in the main process; the trainer sums these)."""
    if attempt and isinstance(getattr(item, "meta", None), dict):
        item.meta["skipped_records"] = attempt


class FullPassDataset(Dataset):
    """Every record of ``datasets`` once per epoch, in an order fixed by ``(seed, epoch)`` (:meth:`set_epoch`).

    A record that fails to load is logged and replaced by the next item of the order (at most ``max_retries`` in a
    row, then :class:`MixtureError`)."""

    def __init__(self, datasets: Sequence, seed: int = 0, max_retries: int = 20) -> None:
        if not datasets or any(len(d) == 0 for d in datasets):
            raise MixtureError("full-pass mode needs non-empty datasets")
        self.max_retries, self.failures = max_retries, 0
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.seed, self.epoch = seed, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(int(self.offsets[-1]))

    def set_epoch(self, epoch: int) -> None:
        """Reorder for pass ``epoch`` and pass it on to datasets that draw per-epoch choices (``set_epoch``)."""
        self.epoch = epoch
        self._order = self._permutation()
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset number, record index) of item ``index`` in the current epoch's order."""
        flat = int(self._order[index])
        k = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        return k, flat - int(self.offsets[k])

    def __getitem__(self, index: int):
        """Item ``index`` of this epoch; a record that fails to load is logged and replaced by the next one."""
        for attempt in range(self.max_retries + 1):
            k, record = self.locate((index + attempt) % len(self))
            try:
                item = self.datasets[k][record]
                _note_skipped(item, attempt)
                return item
            except Exception as exc:  # noqa: BLE001 - a bad record must not kill a long run
                self.failures += 1
                logger.warning("skipping dataset %d record %d (%s: %s); %d failed records so far", k, record,
                               type(exc).__name__, exc, self.failures)
        raise MixtureError(f"{self.max_retries + 1} consecutive records failed to load at item {index}; "
                           "check the data (the log names each one)")
