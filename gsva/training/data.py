"""The training data of a run: the dataset a recipe names, and the endless stream of batches a process draws.

Three kinds of dataset (:func:`build_dataset`):

* no ``datasets`` in the recipe: gRefCOCO-format conversations
  (:class:`gsva.data.gres_dataset.GRESConversationDataset`);
* ``sampling: weighted``: the paper's family mixture (:class:`gsva.data.mixture.MixtureDataset`), one item per sample
  the run will ever draw, item i a pure function of (seed, i);
* ``sampling: full_pass``: every record once per epoch (:class:`gsva.data.mixture.FullPassDataset`).

Rank r of ``world`` processes takes its share of each epoch (a seeded ``DistributedSampler``, or items r, r + world,
... of the mixture stream), so a resumed run that skips the batches it already trained on sees the same data as an
uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from ..data.collate import Batch, collate
from ..data.gres_dataset import GRESConversationDataset, worker_init_fn
from ..data.mixture import FullPassDataset, MixtureDataset
from ..tokens import add_control_tokens
from .recipe import TrainRecipe

__all__ = ["build_dataset", "batches_per_epoch", "endless_batches"]

logger = logging.getLogger(__name__)


def build_dataset(recipe: TrainRecipe, gref, sources: dict | None, tokenizer, config, world: int):
    """The run's training dataset. ``gref``: the gRefCOCO annotations (``sources`` None), ``sources``: the opened
    mixture sources (:func:`gsva.data.training_mix.open_sources`); ``world``: the number of processes (the weighted
    mixture holds ``max_steps x grad_accum x batch_size x world`` items). The dataset's ``token_ids`` carry the
    control-token ids (padding for the collate function)."""
    token_ids = add_control_tokens(tokenizer)
    if sources is None:
        return GRESConversationDataset(gref, recipe.train_split, tokenizer, token_ids, config,
                                       max_targets=recipe.max_targets, seed=recipe.seed,
                                       caption_rate=recipe.caption_rate, attribute_rate=recipe.attribute_rate,
                                       follow_up_rate=recipe.follow_up_rate)
    from ..data.training_mix import conversation_datasets

    families = conversation_datasets(sources, tokenizer, token_ids, config, recipe.max_targets, recipe.seed,
                                     recipe.explanatory, recipe.train_split)
    for family, datasets in families.items():
        logger.info("%s: %s", family, ", ".join(f"{d.name} ({len(d)})" for d in datasets))
    if recipe.sampling == "full_pass":
        dataset = FullPassDataset([d for f in sorted(families) for d in families[f]], seed=recipe.seed)
    else:
        length = recipe.max_steps * recipe.grad_accum * recipe.batch_size * world
        dataset = MixtureDataset(families, {f: recipe.family_weights[f] for f in families}, length,
                                 seed=recipe.seed)
    dataset.token_ids = token_ids
    return dataset


def batches_per_epoch(dataset, batch_size: int, world: int) -> int:
    """Micro-batches per process in one pass over ``dataset`` (the sampler drops the remainder); at least 1."""
    return max(1, (len(dataset) // world) // batch_size)


def endless_batches(dataset, batch_size: int, rank: int, world: int, seed: int, num_workers: int,
                    skip: int = 0) -> Iterator[Batch]:
    """Collated micro-batches of ``batch_size`` items, epoch after epoch, for process ``rank``; the first ``skip``
    micro-batches are passed over without being loaded (a resumed run)."""
    epoch, skip = divmod(skip, batches_per_epoch(dataset, batch_size, world))
    while True:
        dataset.set_epoch(epoch)
        if isinstance(dataset, MixtureDataset):
            # already a seeded random stream: a lazy range (a run's stream can be tens of millions of items)
            usable = len(dataset) // world * world
            indices = range(rank, usable, world)[skip * batch_size:]
        else:
            sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                          seed=seed, drop_last=True)
            sampler.set_epoch(epoch)
            indices = list(sampler)[skip * batch_size:]
        loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=True, num_workers=num_workers,
                            worker_init_fn=worker_init_fn, collate_fn=functools.partial(collate,
                                                                                        pad_id=dataset.token_ids.pad))
        yield from loader
        epoch, skip = epoch + 1, 0
