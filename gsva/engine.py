"""Training: recipe dataclass, model/data construction, and the step loop (plain PyTorch or DeepSpeed ZeRO).

Optimisation follows the paper (appendix Table A3) and the official DeepSpeed config: AdamW, betas (0.9, 0.95),
weight decay 0, linear warm-up for ``warmup_steps`` then linear decay to 0 at ``max_steps`` (DeepSpeed
``WarmupDecayLR``), gradient clipping at 1.0. The same optimiser and schedule objects are used with and without
DeepSpeed (DeepSpeed receives them as client optimiser/scheduler), so both paths train the same way.

Checkpoints: ``<output_dir>/checkpoints/step_XXXXXXX/`` holds the model in our format (:mod:`gsva.checkpoint`),
``trainer_state.json`` and ``optimizer.pt`` (optimizer and scheduler state: tensors and numbers only, read back with
``torch.load(weights_only=True)``). With DeepSpeed, the engine's own ZeRO checkpoint is stored alongside. A run
resumes from the newest complete checkpoint in its ``output_dir``, with the data order continuing where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import dataclasses
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from .checkpoint import load_model, save_model
from .config import ConfigError, GSVAConfig, _from_dict, get_named_config
from .conversation import ANSWER_STARTS, ANSWER_TEMPLATES, QUESTION_TEMPLATES, SYSTEM_PROMPT
from .data.collate import collate
from .data.describe import describe_texts
from .data.grefcoco import GRefCOCO
from .data.refer import default_image_dir
from .data.gres_dataset import GRESConversationDataset, worker_init_fn
from .data.mixture import PAPER_FAMILY_WEIGHTS, FullPassDataset, MixtureDataset
from .devices import autocast_for, check_device_name, resolve_device
from .modeling.gsva_model import GSVAModel
from .tokens import add_control_tokens
from .trainable import set_trainable

__all__ = ["TrainRecipe", "build_model_and_tokenizer", "Trainer", "StepLog", "load_recipe", "lr_at"]

logger = logging.getLogger(__name__)


@dataclass
class TrainRecipe:
    """A training recipe (YAML). Unknown keys are errors.

    model: a named config; ``gsva-tiny`` is built from scratch, the paper configs from ``llava_path`` (HF-format
    LLaVA directory) + ``sam_checkpoint`` (``sam_vit_*.pth``). ``init_from``: a GSVA checkpoint directory instead.
    A config on a base model (``gsva-smol``) starts from its base (:mod:`gsva.base_models`), the vision tower of
    stage (a) (``vision_init``: a ``vision.safetensors``, :mod:`gsva.vision_pretrain`) and the SAM of
    ``sam_init`` (stage (c)'s ``sam.safetensors``, :mod:`gsva.sam_pretrain`, or a GSVA checkpoint directory whose
    ``sam.*`` weights have the same shapes); ``slot_row_words``
    (two words, e.g. ``[yes, no]``) starts the ``[SEG]``/``[REJ]`` rows as the base's rows of those words
    (:func:`gsva.modeling.base_weights.init_slot_rows`).
    data: gRefCOCO-format ``data_root`` (``<root>/grefcoco`` annotations; images under ``image_root``, default
    ``<root>/images/mscoco/images/train2014`` as GSVA's ``refer_seg`` layout, else ``<root>/images``), ``train_split``.
    Or the paper's mixture: ``datasets`` ({family: [dataset names]}, :mod:`gsva.data.training_mix`; e.g.
    ``{sem_seg: [ade20k, ...], refer_seg: [refcoco, ...], vqa: [llava_instruct_150k], reason_seg: [ReasonSeg|train]}``)
    under ``dataset_dir`` (GSVA's ``--dataset_dir`` layout); ``sampling: weighted`` draws families by
    ``family_weights`` (paper 9:6:3:1; only the families listed are used) for ``max_steps``, ``sampling: full_pass``
    goes through every record once per epoch; ``explanatory`` is ReasonSeg's explanation-only rate (official 0.1).
    ``data_root`` then only names the gRefCOCO folder used for validation.
    Batch: ``batch_size`` per process x ``grad_accum`` x processes = global batch.
    Length: ``max_steps`` optimizer steps (the paper's pre-training), or ``epochs`` full passes over the training
    images (the paper's fine-tuning, appendix Table A3), which then sets the step count.
    ``caption_rate``: share of training items that are describe-the-scene conversations instead of GRES ones
    (:mod:`gsva.data.describe`; 0 = the official recipe; for models whose vision side starts from scratch);
    ``attribute_rate``: share of those that are attribute questions answered in words instead
    (:func:`gsva.data.describe.attribute_question`).
    ``max_bad_steps``: a step whose loss is NaN/inf is skipped (no update) and logged; more than this many in a row
    stop the run with an error.
    Validation: every ``val_every`` steps (0 = never) the first ``val_limit`` images of ``val_split`` of
    ``val_dataset`` (``grefcoco``, ``refcoco``, ... or ``custom``: :func:`gsva.evaluation.open_benchmark` under
    ``data_root``) are evaluated with ``val_protocol`` (:mod:`gsva.evaluation`); the
    checkpoint with the highest ``best_metric`` ("<scorer>.<metric>", e.g. "rela.gIoU") is kept in
    ``checkpoints/best`` besides the last ``keep_last`` step checkpoints.
    ``device``: where plain-PyTorch training runs — "auto" (the first CUDA device if torch sees one, else the CPU),
    "cpu", "cuda" or "cuda:N" (:mod:`gsva.devices`); ``precision: bf16`` autocasts for that device's type. Under
    DeepSpeed the engine places the model itself.
    ``gradient_checkpointing``: recompute the LLM's layer activations in the backward pass instead of storing them
    (less memory, about a third more compute; transformers' ``gradient_checkpointing_enable``).
    Logging: ``tensorboard`` writes losses, learning rate and validation metrics to ``<output_dir>/tensorboard``;
    ``wandb_project`` also sends them to Weights & Biases (needs ``wandb`` installed and configured).
    """

    model: str = "gsva-tiny"
    init_from: str | None = None
    vision_init: str | None = None
    sam_init: str | None = None
    slot_row_words: list[str] | None = None
    llava_path: str | None = None
    sam_checkpoint: str | None = None
    model_overrides: dict = field(default_factory=dict)
    data_root: str = "data/synth"
    image_root: str | None = None
    train_split: str = "train"
    datasets: dict[str, list[str]] | None = None
    dataset_dir: str | None = None
    family_weights: dict[str, float] = field(default_factory=lambda: dict(PAPER_FAMILY_WEIGHTS))
    sampling: str = "weighted"
    explanatory: float = 0.1
    max_targets: int = 5
    caption_rate: float = 0.0
    attribute_rate: float = 0.0
    tokenizer_vocab_size: int = 1000
    output_dir: str = "runs/gsva-tiny"
    seed: int = 0
    max_steps: int = 1000
    epochs: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    num_workers: int = 1
    precision: str = "fp32"
    device: str = "auto"
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    deepspeed_config: str = "ds_configs/zero2.json"
    torch_threads: int = 0
    gradient_checkpointing: bool = False
    max_bad_steps: int = 10
    val_split: str | None = None
    val_dataset: str = "grefcoco"
    val_every: int = 0
    val_limit: int | None = 50
    val_protocol: str = "teacher-forced"
    best_metric: str = "rela.gIoU"
    tensorboard: bool = True
    wandb_project: str | None = None

    def validate(self) -> "TrainRecipe":
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError("precision must be 'fp32' or 'bf16'")
        check_device_name(self.device)
        for name in ("max_steps", "batch_size", "grad_accum", "max_targets", "save_every", "log_every",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not 0.0 <= self.caption_rate < 1.0:
            raise ConfigError("caption_rate must be in [0, 1)")
        if not 0.0 <= self.attribute_rate <= 1.0:
            raise ConfigError("attribute_rate must be in [0, 1]")
        if self.slot_row_words is not None and (len(self.slot_row_words) != 2 or not all(
                isinstance(w, str) and w.strip() for w in self.slot_row_words)):
            raise ConfigError(f"slot_row_words must be two words ([SEG], [REJ]), got {self.slot_row_words!r} (quote "
                              "them in YAML: [yes, no] reads as two booleans)")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ConfigError("warmup_steps must be >= 0 and lr > 0")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("epochs must be >= 1 (or null to train for max_steps)")
        if self.val_every < 0 or (self.val_every and not self.val_split):
            raise ConfigError("val_every must be >= 0, and needs val_split")
        from .evaluation.benchmarks import DATASETS

        if self.val_dataset not in DATASETS:
            raise ConfigError(f"val_dataset must be one of {', '.join(DATASETS)}")
        if self.val_protocol not in ("teacher-forced", "generate"):
            raise ConfigError("val_protocol must be 'teacher-forced' or 'generate'")
        if self.val_limit is not None and self.val_limit < 1:
            raise ConfigError("val_limit must be >= 1 (or null for the whole split)")
        if self.datasets is not None:
            from .data.training_mix import validate_spec

            try:
                validate_spec(self.datasets)
            except ValueError as exc:
                raise ConfigError(f"datasets: {exc}") from None
            if not self.dataset_dir:
                raise ConfigError("datasets needs dataset_dir (the folder holding ade20k/, refer_seg/, ...)")
            missing = [f for f in self.datasets if not self.family_weights.get(f, 0) > 0]
            if self.sampling == "weighted" and missing:
                raise ConfigError(f"family_weights needs a weight > 0 for {', '.join(missing)}")
        if self.sampling not in ("weighted", "full_pass"):
            raise ConfigError("sampling must be 'weighted' or 'full_pass'")
        if self.sampling == "weighted" and self.datasets is not None and self.epochs is not None:
            raise ConfigError("weighted sampling trains for max_steps; use sampling: full_pass with epochs")
        if not 0.0 <= self.explanatory <= 1.0:
            raise ConfigError("explanatory must be in [0, 1]")
        if self.best_metric.count(".") != 1:
            raise ConfigError(f"best_metric must be '<scorer>.<metric>', e.g. 'rela.gIoU', got {self.best_metric!r}")
        from .scoring import SCORERS

        if self.best_metric.split(".")[0] not in SCORERS:
            raise ConfigError(f"best_metric {self.best_metric!r}: unknown scorer; known: {', '.join(SCORERS)}")
        if self.datasets is not None and self.caption_rate > 0:
            raise ConfigError("caption_rate applies to the gRefCOCO-only recipe (datasets: null), not to a mixture")
        return self


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainRecipe:
    """Read a YAML recipe and apply ``key=value`` overrides (values parsed as YAML). Raises ConfigError."""
    return load_recipe_as(TrainRecipe, path, overrides)


def load_recipe_as(cls: type, path: str | Path, overrides: list[str] | None = None):
    """Read a YAML recipe into the dataclass ``cls`` (unknown keys are errors) with ``key=value`` overrides, and
    return ``cls(...).validate()``. Raises ConfigError naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        data[key] = yaml.safe_load(value)
    try:
        return _from_dict(cls, data, "recipe").validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def lr_at(step: int, recipe: TrainRecipe) -> float:
    """Learning rate multiplier at optimizer step ``step`` (0-based): linear warm-up, then linear decay to 0."""
    if recipe.warmup_steps and step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(1, recipe.max_steps - recipe.warmup_steps)
    return max(0.0, 1.0 - (step - recipe.warmup_steps) / span)


def tokenizer_corpus(gref: GRefCOCO | None, describe: bool = False, texts: Sequence[str] = ()) -> list[str]:
    """Texts the tiny tokenizer is trained on: every expression of ``gref`` plus the prompt and answer templates,
    with ``describe`` the describe-the-scene question and answers (:mod:`gsva.data.describe`), and ``texts`` (the
    text of a mixture's datasets, :func:`gsva.data.training_mix.source_texts`)."""
    texts = list(texts)
    if gref is not None:
        texts += [s["sent"] for r in gref.refs for s in r["sentences"]]
    if describe and gref is not None:
        texts += describe_texts(gref)
    texts += [SYSTEM_PROMPT + " USER: ", " ASSISTANT:", "USER: "] + list(QUESTION_TEMPLATES)
    texts += [" " + s for s in ANSWER_STARTS] + [t.replace("[SEG]", "") for t in ANSWER_TEMPLATES]
    return texts


def build_model_and_tokenizer(recipe: TrainRecipe, gref: GRefCOCO | None,
                              texts: Sequence[str] = ()) -> tuple[GSVAModel, object]:
    """A fresh model from a named config (training a tokenizer on ``gref``'s expressions and ``texts`` for
    ``gsva-tiny``), or a checkpoint."""
    if recipe.init_from:
        model, tokenizer = load_model(recipe.init_from)
        model.train()
        return model, tokenizer
    config = get_named_config(recipe.model)
    if recipe.model_overrides:
        config = GSVAConfig.from_dict(_merge(config.to_dict(), recipe.model_overrides))
    if config.text.base is not None:
        return build_on_base(config, recipe)
    if recipe.llava_path or recipe.sam_checkpoint:
        if not (recipe.llava_path and recipe.sam_checkpoint):
            raise ConfigError("llava_path and sam_checkpoint go together")
        from .pretrained import build_from_components

        return build_from_components(config, recipe.llava_path, recipe.sam_checkpoint)
    if recipe.model != "gsva-tiny":
        raise ConfigError(f"{recipe.model} starts from pretrained weights: set llava_path and sam_checkpoint, "
                          "or init_from")
    from .tokenizer_build import train_tokenizer

    corpus = tokenizer_corpus(gref, describe=recipe.caption_rate > 0, texts=texts)
    tokenizer = train_tokenizer(corpus, vocab_size=recipe.tokenizer_vocab_size)
    ids = add_control_tokens(tokenizer)
    config.text.vocab_size = recipe.tokenizer_vocab_size
    return GSVAModel(config, ids, len(tokenizer)), tokenizer


def build_on_base(config: GSVAConfig, recipe: TrainRecipe) -> tuple[GSVAModel, object]:
    """Stage (d) start: the base model, the stage-(a) vision tower and the SAM of ``recipe.sam_init``."""
    from .base_models import build_based_model
    from .checkpoint import _check_keys, load_weights
    from .modeling.base_weights import init_slot_rows
    from .sam_pretrain import load_sam_weights
    from .vision_pretrain import load_vision_weights

    model, tokenizer = build_based_model(config)
    if recipe.vision_init:
        load_vision_weights(model, recipe.vision_init)
    else:
        logger.warning("no vision_init: the vision tower starts from random weights")
    if recipe.slot_row_words:
        init_slot_rows(model, tokenizer, recipe.slot_row_words)
    if recipe.sam_init and str(recipe.sam_init).endswith(".safetensors"):
        load_sam_weights(model, recipe.sam_init)
    elif recipe.sam_init:
        state, source = load_weights(recipe.sam_init)
        state = {k: v for k, v in state.items() if k.startswith("sam.")}
        expected = {k: v for k, v in model.state_dict().items() if k.startswith("sam.")}
        _check_keys(expected, state, source)
        with torch.no_grad():
            for k, v in state.items():
                expected[k].copy_(v)
    return model, tokenizer


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@dataclass
class StepLog:
    """What one optimizer step reports. Losses are averages over the step's micro-batches; ``skipped``: a non-finite
    loss made the step skip its update (its losses are then NaN/inf); ``bad_records``: records that failed to load
    and were replaced, so far in this process's run (mixture and full-pass data)."""

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Runs a recipe. Use :meth:`steps` (a generator of :class:`StepLog`) from an entry script.

    Args:
        recipe: the training recipe.
        use_deepspeed: wrap the model in a DeepSpeed engine configured by ``recipe.deepspeed_config``.
    """

    def __init__(self, recipe: TrainRecipe, use_deepspeed: bool = False) -> None:
        self.recipe = recipe
        self.use_deepspeed = use_deepspeed
        seed_everything(recipe.seed)
        if recipe.torch_threads:
            torch.set_num_threads(recipe.torch_threads)
        sources = None
        if recipe.datasets is None:
            root = Path(recipe.data_root)
            self.gref = GRefCOCO(root / "grefcoco", recipe.image_root or default_image_dir(root, "grefcoco"))
        else:
            from .data.training_mix import open_sources

            self.gref = None
            sources = open_sources(recipe.datasets, recipe.dataset_dir, recipe.train_split)
        self.output_dir = Path(recipe.output_dir)
        self.start_step = 0
        resume = latest_checkpoint(self.output_dir)
        if resume is not None:
            self.model, self.tokenizer = load_model(resume)
            self.start_step = json.loads((resume / "trainer_state.json").read_text())["step"]
            logger.info("resuming from %s (step %d)", resume, self.start_step)
        else:
            from .data.training_mix import source_texts

            texts = source_texts(sources, recipe.train_split) if sources and recipe.model == "gsva-tiny" \
                and not recipe.init_from else ()
            self.model, self.tokenizer = build_model_and_tokenizer(recipe, self.gref, texts)
        self.model.train()
        if not use_deepspeed:  # DeepSpeed puts the model on its accelerator in deepspeed.initialize
            self.model.to(resolve_device(recipe.device))
        logger.info("training on %s", self.model.device)
        if recipe.gradient_checkpointing:
            self.model.mllm.model.language_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.dataset = self._build_dataset(sources)
        if recipe.epochs is not None:
            per_epoch = max(1, self._batches_per_epoch() // recipe.grad_accum)
            recipe = self.recipe = dataclasses.replace(recipe, max_steps=recipe.epochs * per_epoch)
            logger.info("%d epochs x %d steps = %d steps", recipe.epochs, per_epoch, recipe.max_steps)
        names = set_trainable(self.model, self.model.config.trainable)
        if self.model.config.text.base is not None:
            from .modeling.base_weights import train_added_rows_only

            if recipe.weight_decay:  # decay would shrink the base rows of the embedding, which are never saved
                raise ConfigError(f"{self.model.config.name} is built on a base model: weight_decay must be 0")
            train_added_rows_only(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        logger.info("trainable: %d tensors, %.2fM of %.2fM parameters", len(names),
                    sum(p.numel() for p in params) / 1e6, sum(p.numel() for p in self.model.parameters()) / 1e6)
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, betas=tuple(recipe.betas),
                                           weight_decay=recipe.weight_decay)
        restored = resume is not None and not use_deepspeed and (resume / "optimizer.pt").exists()
        # DeepSpeed restores the scheduler state itself (engine.load_checkpoint in _init_deepspeed)
        ds_restores = resume is not None and use_deepspeed and (resume / "deepspeed").exists()
        # without a restored scheduler state, the schedule starts at the resumed step rather than at 0
        offset = 0 if restored or ds_restores or resume is None else self.start_step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s + offset, recipe))
        if restored:
            state = torch.load(resume / "optimizer.pt", weights_only=True, map_location="cpu")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        elif resume is not None and not use_deepspeed:
            logger.warning("%s has no optimizer state: AdamW moments restart from zero", resume)
        self.validation_history: list[tuple[int, dict]] = []
        self.bad_records = 0
        self.engine = None
        if use_deepspeed:
            self._init_deepspeed(resume)

    def _init_deepspeed(self, resume: Path | None) -> None:
        import deepspeed

        ds_config = json.loads(Path(self.recipe.deepspeed_config).read_text())
        ds_config.update({
            "train_micro_batch_size_per_gpu": self.recipe.batch_size,
            "gradient_accumulation_steps": self.recipe.grad_accum,
            "gradient_clipping": self.recipe.grad_clip,
            "bf16": {"enabled": self.recipe.precision == "bf16"},
            "zero_force_ds_cpu_optimizer": False,
        })
        ds_config.pop("train_batch_size", None)
        if ds_config.get("zero_optimization", {}).get("stage") == 3 and self.recipe.val_every:
            raise ConfigError("validation during training needs the whole model on one process, which ZeRO-3 "
                              "partitions: set val_every: 0 and evaluate the saved checkpoints with "
                              "eval/evaluate.py, or use ds_configs/zero2_offload.json")
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=ds_config)
        if resume is not None and (resume / "deepspeed").exists():
            path, _ = self.engine.load_checkpoint(str(resume / "deepspeed"), load_module_strict=True)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load its checkpoint from {resume / 'deepspeed'}")

    def _build_dataset(self, sources: dict | None):
        """The training dataset: gRefCOCO conversations (no ``datasets``), the weighted mixture, or a full pass."""
        r = self.recipe
        token_ids = add_control_tokens(self.tokenizer)
        if sources is None:
            return GRESConversationDataset(self.gref, r.train_split, self.tokenizer, token_ids, self.model.config,
                                           max_targets=r.max_targets, seed=r.seed, caption_rate=r.caption_rate,
                                           attribute_rate=r.attribute_rate)
        from .data.training_mix import conversation_datasets

        families = conversation_datasets(sources, self.tokenizer, token_ids, self.model.config, r.max_targets,
                                         r.seed, r.explanatory, r.train_split)
        for family, datasets in families.items():
            logger.info("%s: %s", family, ", ".join(f"{d.name} ({len(d)})" for d in datasets))
        if r.sampling == "full_pass":
            dataset = FullPassDataset([d for f in sorted(families) for d in families[f]], seed=r.seed)
        else:
            # one item per sample the run will ever draw; item i is a pure function of (seed, i)
            length = r.max_steps * r.grad_accum * r.batch_size * self.world
            dataset = MixtureDataset(families, {f: r.family_weights[f] for f in families}, length, seed=r.seed)
        dataset.token_ids = token_ids
        return dataset

    def _batches_per_epoch(self) -> int:
        """Micro-batches per process in one pass over the training images (the sampler drops the remainder)."""
        return max(1, (len(self.dataset) // self.world) // self.recipe.batch_size)

    def _batches(self, skip: int = 0) -> Iterator:
        """Endless batches, epoch after epoch; the first ``skip`` batches are skipped without being loaded."""
        epoch, skip = divmod(skip, self._batches_per_epoch())
        while True:
            self.dataset.set_epoch(epoch)
            if isinstance(self.dataset, MixtureDataset):
                # already a seeded random stream: rank r takes items r, r + world, ... (a lazy range: the run's
                # whole stream can be tens of millions of items)
                usable = len(self.dataset) // self.world * self.world
                indices = range(self.rank, usable, self.world)[skip * self.recipe.batch_size:]
            else:
                sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank,
                                                              shuffle=True, seed=self.recipe.seed, drop_last=True)
                sampler.set_epoch(epoch)
                indices = list(sampler)[skip * self.recipe.batch_size:]
            loader = DataLoader(self.dataset, batch_size=self.recipe.batch_size, sampler=indices, drop_last=True,
                                num_workers=self.recipe.num_workers, worker_init_fn=worker_init_fn,
                                collate_fn=functools.partial(collate, pad_id=self.dataset.token_ids.pad))
            yield from loader
            epoch, skip = epoch + 1, 0

    def steps(self) -> Iterator[StepLog]:
        """Train from ``start_step`` to ``max_steps``, yielding a log per optimizer step and saving checkpoints."""
        r = self.recipe
        # a resumed run continues the data order where it stopped
        batches = self._batches(skip=self.start_step * r.grad_accum)
        # DeepSpeed runs bf16 itself (its "bf16" config section)
        autocast = contextlib.nullcontext() if self.use_deepspeed else autocast_for(self.model.device, r.precision)
        bad_in_a_row = 0
        for step in range(self.start_step, r.max_steps):
            sums = np.zeros(6)
            masks = 0
            bad = False
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (read before any scheduler step)
            for _micro in range(r.grad_accum):
                batch = next(batches).to(self.model.device)
                self.bad_records += sum(int(m.get("skipped_records", 0)) for m in batch.meta)
                with autocast:
                    out = (self.engine or self.model)(batch)
                loss = out.loss
                finite = self._all_finite(loss.total)
                bad = bad or not finite
                if self.engine is not None:
                    # DeepSpeed cannot drop a step: a non-finite micro-batch contributes a zero gradient instead
                    # (on every rank: they agree on `finite`, so they all run the same backward graph)
                    if not finite and self.engine.zero_optimization_stage() == 3:
                        raise RuntimeError(f"non-finite loss at step {step + 1}: with ZeRO-3 a bad step cannot be "
                                           "skipped (parameters are partitioned); the run stops and resumes from "
                                           "its last checkpoint. Lower the learning rate, use fp32, or check the data")
                    self.engine.backward(loss.total if finite else self._zero_loss())
                    self.engine.step()
                elif finite:
                    (loss.total / r.grad_accum).backward()
                sums += [loss.total.item(), loss.ce.item(), loss.mask_bce.item(), loss.mask_dice.item(),
                         0.0 if loss.point_mask is None else loss.point_mask.item(),
                         0.0 if loss.pointer is None else loss.pointer.item()]
                masks += loss.num_masks
            if self.engine is None:
                if not bad:
                    torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                   r.grad_clip)
                    self.optimizer.step()
                self.scheduler.step()  # the schedule follows the step count, skipped steps included
                self.optimizer.zero_grad(set_to_none=True)
            if bad:
                bad_in_a_row += 1
                logger.warning("step %d: non-finite loss (%s); %s (%d in a row)", step + 1, sums[0] / r.grad_accum,
                               "its micro-batch contributed a zero gradient" if self.engine is not None
                               else "update skipped", bad_in_a_row)
                if bad_in_a_row > r.max_bad_steps:
                    raise RuntimeError(f"non-finite loss in {bad_in_a_row} consecutive steps (up to step {step + 1}), "
                                       f"more than max_bad_steps={r.max_bad_steps}: lower the learning rate, use "
                                       "fp32, or check the data; the last good checkpoint is kept")
            else:
                bad_in_a_row = 0
            sums /= r.grad_accum
            yield StepLog(step + 1, *[float(v) for v in sums], lr=lr, num_masks=masks, skipped=bad,
                          bad_records=self.bad_records)
            if (step + 1) % r.save_every == 0 or step + 1 == r.max_steps:
                self.save(step + 1)
            if r.val_every and ((step + 1) % r.val_every == 0 or step + 1 == r.max_steps):
                self.validate_and_keep_best(step + 1)

    def validate(self) -> dict:
        """Evaluate the current weights on the validation split; returns {scorer: metrics} (rank 0 only)."""
        from .evaluation import open_benchmark, run_benchmark, summarize
        from .inference import GSVAPredictor

        r = self.recipe
        if not hasattr(self, "_val_benchmark"):
            self._val_benchmark = open_benchmark(r.val_dataset, r.data_root, r.val_split, r.image_root)
        scorer = r.best_metric.split(".")[0]
        was_training = self.model.training
        try:
            predictor = GSVAPredictor(self.model, self.tokenizer)
            with torch.no_grad():
                rows = run_benchmark(self._val_benchmark, predictor, r.val_protocol, limit=r.val_limit,
                                     batch_size=8 if r.val_protocol == "teacher-forced" else 1)
            return summarize(rows, r.val_dataset, (scorer,))["scorers"]
        finally:
            self.model.train(was_training)

    def validate_and_keep_best(self, step: int) -> float | None:
        """Validate (rank 0) and write ``checkpoints/best`` when ``best_metric`` improved. Returns the metric."""
        value = None
        if self.rank == 0:
            scorer, metric = self.recipe.best_metric.split(".")
            results = self.validate()
            if metric not in results.get(scorer, {}):
                raise ConfigError(f"best_metric {self.recipe.best_metric!r}: {scorer} reports "
                                  f"{', '.join(results.get(scorer, {}))}")
            value = results[scorer][metric]
            self.validation_history.append((step, results))
            logger.info("step %d validation (%s %s, %s, %s images), %s: %s", step, self.recipe.val_dataset,
                        self.recipe.val_split, self.recipe.val_protocol, self.recipe.val_limit or "all", scorer,
                        ", ".join(f"{k} {v:.4f}" for k, v in results[scorer].items() if isinstance(v, float)))
            best = self.output_dir / "checkpoints" / "best"
            previous = json.loads((best / "trainer_state.json").read_text())["value"] \
                if (best / "trainer_state.json").exists() else None
            if value is not None and (previous is None or value > previous):
                # the state file goes in with the weights: a crash leaves the old best or the complete new one
                save_model(self.model, self.tokenizer, best, extra_files={"trainer_state.json": json.dumps(
                    {"step": step, "metric": self.recipe.best_metric, "value": value, "validation": results},
                    indent=2)})
                logger.info("new best %s = %.4f at step %d -> %s", self.recipe.best_metric, value, step, best)
        if self.engine is not None:
            torch.distributed.barrier()
        return value

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every process (one all-reduce when data-parallel), so that all ranks skip
        or keep a micro-batch together and count bad steps alike."""
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if self.engine is not None and self.world > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def _zero_loss(self) -> torch.Tensor:
        """A finite zero loss touching every trainable parameter (its gradient is zero everywhere)."""
        return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0

    def _gathered_state_dict(self) -> dict | None:
        """ZeRO-3: the whole model's weights gathered from every rank's partition (collective; complete on rank 0
        only). Otherwise None: the model holds its full weights."""
        if self.engine is not None and self.engine.zero_optimization_stage() == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return None

    def save_final(self) -> Path:
        """Write ``<output_dir>/final`` in our checkpoint format (all ranks call it; rank 0 writes)."""
        final = self.output_dir / "final"
        gathered = self._gathered_state_dict()
        if self.rank == 0:
            save_model(self.model, self.tokenizer, final, state_dict=gathered)
        return final

    def save(self, step: int) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` (rank 0 writes the model; all ranks join a DeepSpeed save)."""
        ckpt = self.output_dir / "checkpoints" / f"step_{step:07d}"
        gathered = self._gathered_state_dict()
        if self.rank == 0:
            save_model(self.model, self.tokenizer, ckpt, state_dict=gathered)
            if self.engine is None:
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                           ckpt / "optimizer.pt")
        if self.engine is not None:
            self.engine.save_checkpoint(str(ckpt / "deepspeed"), tag="state")  # collective
            torch.distributed.barrier()
        if self.rank == 0:
            # written last and atomically: its presence marks the checkpoint complete (latest_checkpoint)
            _write_atomic(ckpt / "trainer_state.json", json.dumps(
                {"step": step, "recipe": dataclasses.asdict(self.recipe)}, indent=2))
            ckpts = sorted((self.output_dir / "checkpoints").glob("step_*"))
            for old in ckpts[: -self.recipe.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        return ckpt


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/step_*`` directory (one with ``trainer_state.json``), or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if re.fullmatch(r"step_\d{7}", p.name) and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: p.name) if done else None
