"""The GSVA training loop: a recipe in, :class:`StepLog` per optimizer step out.

The parts live beside it: the recipe (:mod:`.recipe`), the model a run starts from (:mod:`.model_setup`), the data
(:mod:`.data`), plain PyTorch vs DeepSpeed (:mod:`.backends`), the schedule (:mod:`.schedule`), checkpoints
(:mod:`.checkpointer`), validation (:mod:`.validation`). A run resumes from the newest complete checkpoint in its
``output_dir``, with the data order continuing where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..data.grefcoco import GRefCOCO
from ..data.refer import default_image_dir
from ..devices import resolve_device
from .backends import DeepSpeedBackend, PlainBackend
from .checkpointer import Checkpointer
from .data import batches_per_epoch, build_dataset, endless_batches
from ..distributed import all_finite, barrier, rank_and_world
from .model_setup import build_model_and_tokenizer, trainable_parameters
from .recipe import TrainRecipe
from .schedule import warmup_linear_decay
from .validation import Validator

__all__ = ["Trainer", "StepLog"]

logger = logging.getLogger(__name__)

LOSS_FIELDS = ("loss", "ce", "mask_bce", "mask_dice", "point_mask", "pointer")
"""The StepLog fields of the loss terms, in the order the step loop sums them."""


@dataclass
class StepLog:
    """What one optimizer step reports. Losses are averages over the step's micro-batches (``loss`` the total,
    the others its terms: :class:`gsva.losses.LossBreakdown`); ``lr``: the learning rate the step used; ``num_masks``:
    ground-truth masks in the step; ``skipped``: a non-finite loss made the step skip its update (its losses are
    then NaN/inf); ``bad_records``: records that failed to load and were replaced, so far in this process's run
    (mixture and full-pass data); ``validation``: ``{scorer: {metric: value}}`` when the step ended with a
    validation (rank 0), else None."""

    step: int
    loss: float
    ce: float
    mask_bce: float
    mask_dice: float
    point_mask: float
    pointer: float
    lr: float
    num_masks: int
    skipped: bool = False
    bad_records: int = 0
    validation: dict | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Runs a recipe. Use :meth:`steps` (a generator of :class:`StepLog`) from an entry script.

    Args:
        recipe: the training recipe (``epochs`` set: ``self.recipe.max_steps`` becomes the step count).
        use_deepspeed: wrap the model in a DeepSpeed engine configured by ``recipe.deepspeed_config`` (the process
            group must already be initialised, e.g. by ``deepspeed.init_distributed``).

    Raises ConfigError for an inconsistent recipe, CheckpointError for unusable start weights.
    """

    def __init__(self, recipe: TrainRecipe, use_deepspeed: bool = False) -> None:
        self.recipe = recipe
        self.use_deepspeed = use_deepspeed
        seed_everything(recipe.seed)
        if recipe.torch_threads:
            torch.set_num_threads(recipe.torch_threads)
        self.validator = Validator(recipe)  # checks the dataset and scorer names before anything is built
        self.rank, self.world = rank_and_world()
        self.checkpointer = Checkpointer(recipe.output_dir, recipe.keep_last)
        self.gref, sources = self._open_data()
        resume = self.checkpointer.latest()
        self.model, self.tokenizer = self._start_model(resume, sources)
        self.start_step = 0 if resume is None else self.checkpointer.resumed_step(resume)
        self.model.train()
        if not use_deepspeed:  # DeepSpeed puts the model on its accelerator in deepspeed.initialize
            self.model.to(resolve_device(recipe.device))
        logger.info("training on %s", self.model.device)
        if recipe.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.dataset = build_dataset(recipe, self.gref, sources, self.tokenizer, self.model.config, self.world)
        if recipe.epochs is not None:
            per_epoch = max(1, self._batches_per_epoch() // recipe.grad_accum)
            recipe = self.recipe = dataclasses.replace(recipe, max_steps=recipe.epochs * per_epoch)
            self.validator.recipe = recipe
            logger.info("%d epochs x %d steps = %d steps", recipe.epochs, per_epoch, recipe.max_steps)
        optimizer = torch.optim.AdamW(trainable_parameters(self.model, recipe), lr=recipe.lr,
                                      betas=tuple(recipe.betas), weight_decay=recipe.weight_decay)
        backend_cls = DeepSpeedBackend if use_deepspeed else PlainBackend
        restorable = resume is not None and (resume / backend_cls.state_name).exists()
        # without a restored scheduler state, the schedule starts at the resumed step rather than at 0
        scheduler = warmup_linear_decay(optimizer, recipe.warmup_steps, recipe.max_steps,
                                        offset=0 if restorable else self.start_step)
        self.backend = DeepSpeedBackend(self.model, optimizer, scheduler, recipe, self.world) if use_deepspeed \
            else PlainBackend(self.model, optimizer, scheduler, recipe)
        if resume is not None:
            self.backend.restore(resume)
        self.bad_records = 0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.backend.optimizer

    @property
    def output_dir(self) -> Path:
        return self.checkpointer.output_dir

    def _open_data(self) -> tuple[GRefCOCO | None, dict | None]:
        r = self.recipe
        if r.datasets is None:
            root = Path(r.data_root)
            return GRefCOCO(root / "grefcoco", r.image_root or default_image_dir(root, "grefcoco")), None
        from ..data.training_mix import open_sources

        return None, open_sources(r.datasets, r.dataset_dir, r.train_split)

    def _start_model(self, resume: Path | None, sources: dict | None):
        if resume is not None:
            logger.info("resuming from %s (step %d)", resume, self.checkpointer.resumed_step(resume))
            return load_model(resume)
        texts = ()
        if sources and self.recipe.model == "gsva-tiny" and not self.recipe.init_from:
            from ..data.training_mix import source_texts

            texts = source_texts(sources, self.recipe.train_split)
        return build_model_and_tokenizer(self.recipe, self.gref, texts)

    def _batches_per_epoch(self) -> int:
        return batches_per_epoch(self.dataset, self.recipe.batch_size, self.world)

    def _batches(self, skip: int = 0) -> Iterator:
        """Endless micro-batches of this process; the first ``skip`` are passed over without being loaded."""
        r = self.recipe
        return endless_batches(self.dataset, r.batch_size, self.rank, self.world, r.seed, r.num_workers, skip)

    def steps(self) -> Iterator[StepLog]:
        """Train from ``start_step`` to ``max_steps``. Each optimizer step saves its checkpoint and runs its
        validation (when due) before its :class:`StepLog` is yielded. Raises RuntimeError after more than
        ``max_bad_steps`` non-finite steps in a row."""
        r = self.recipe
        batches = self._batches(skip=self.start_step * r.grad_accum)  # continue the data order
        bad_in_a_row = 0
        for step in range(self.start_step + 1, r.max_steps + 1):
            sums, masks, bad = np.zeros(len(LOSS_FIELDS)), 0, False
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (read before any scheduler step)
            for _micro in range(r.grad_accum):
                batch = next(batches).to(self.model.device)
                self.bad_records += sum(int(m.get("skipped_records", 0)) for m in batch.meta)
                with self.backend.autocast():
                    loss = self.backend.forward(batch).loss
                finite = all_finite(loss.total, self.world if self.use_deepspeed else 1)
                bad = bad or not finite
                self.backend.micro_step(loss.total, finite, step)
                sums += [float(t.item()) if t is not None else 0.0 for t in
                         (loss.total, loss.ce, loss.mask_bce, loss.mask_dice, loss.point_mask, loss.pointer)]
                masks += loss.num_masks
            self.backend.end_step(bad)
            bad_in_a_row = bad_in_a_row + 1 if bad else 0
            if bad:
                logger.warning("step %d: non-finite loss (%s); %s (%d in a row)", step, sums[0] / r.grad_accum,
                               self.backend.skip_note, bad_in_a_row)
                if bad_in_a_row > r.max_bad_steps:
                    raise RuntimeError(f"non-finite loss in {bad_in_a_row} consecutive steps (up to step {step}), "
                                       f"more than max_bad_steps={r.max_bad_steps}: lower the learning rate, use "
                                       "fp32, or check the data; the last good checkpoint is kept")
            if step % r.save_every == 0 or step == r.max_steps:
                self.save(step)
            validation = None
            if self.validator.due(step):
                validation = self.validate_and_keep_best(step)
            means = {name: float(v) for name, v in zip(LOSS_FIELDS, sums / r.grad_accum)}
            yield StepLog(step, **means, lr=lr, num_masks=masks, skipped=bad,
                          bad_records=self.bad_records,
                          validation=None if validation is None else validation["results"])

    def validate_and_keep_best(self, step: int) -> dict | None:
        """Validate (rank 0) and write ``checkpoints/best`` when ``best_metric`` improved. Returns
        ``{"value": metric value or None, "results": {scorer: metrics}}`` on rank 0, None on the other ranks (all
        ranks call it; they wait for rank 0)."""
        out = None
        if self.rank == 0:
            results = self.validator.run(self.model, self.tokenizer)
            value = self.validator.value(results)
            self.validator.log(step, results)
            if self.checkpointer.keep_if_best(self.model, self.tokenizer, step, self.recipe.best_metric, value,
                                              results):
                logger.info("new best %s = %.4f at step %d -> %s", self.recipe.best_metric, value, step,
                            self.output_dir / "checkpoints" / "best")
            out = {"value": value, "results": results}
        barrier(self.world)
        return out

    def save(self, step: int) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` (rank 0 writes the model; all ranks join a DeepSpeed save)."""
        ckpt = self.checkpointer.step_dir(step)
        gathered = self.backend.gathered_state_dict()
        if self.rank == 0:
            self.checkpointer.write_model(ckpt, self.model, self.tokenizer, state_dict=gathered)
        self.backend.save_state(ckpt, self.rank)
        if self.rank == 0:  # last: its trainer_state.json marks the checkpoint complete
            self.checkpointer.complete(ckpt, step, dataclasses.asdict(self.recipe))
        return ckpt

    def save_final(self) -> Path:
        """Write ``<output_dir>/final`` in our checkpoint format (all ranks call it; rank 0 writes)."""
        final = self.checkpointer.final_dir()
        gathered = self.backend.gathered_state_dict()
        if self.rank == 0:
            self.checkpointer.write_model(final, self.model, self.tokenizer, state_dict=gathered)
        return final
