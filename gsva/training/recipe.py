"""The training recipe: a typed, validated dataclass read from YAML with ``key=value`` overrides.

Optimisation defaults follow the paper (appendix Table A3) and the DeepSpeed config that the official code builds
(github.com/LeapLabTHU/GSVA at 618dc79, ``main.py``): AdamW, betas (0.9, 0.95), weight decay 0, linear warm-up then
linear decay to 0 (DeepSpeed ``WarmupDecayLR``; :mod:`gsva.training.schedule`), gradient clipping at 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConfigError, _from_dict
from ..data.mixture import PAPER_FAMILY_WEIGHTS
from ..devices import check_device_name

__all__ = ["TrainRecipe", "load_recipe", "load_recipe_as"]


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
    ``model_overrides``: nested config values merged into the named config; with ``init_from`` only the sections
    that no weight depends on (``loss``, ``trainable``, ``reject_threshold``), which the saved config then keeps.
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
    (:func:`gsva.data.describe.attribute_question`). ``follow_up_rate``: share of GRES conversations with two or more
    targets asked in two turns, the second a follow-up (0 = the official recipe: one turn;
    :class:`gsva.data.gres_dataset.GRESConversationDataset`).
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
    follow_up_rate: float = 0.0
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
        """Check the values; return ``self``. Raises ConfigError. The names of ``val_dataset`` and of
        ``best_metric``'s scorer are checked where validation is set up (:class:`gsva.training.validation.Validator`),
        so that reading a recipe does not import the evaluation code."""
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
        if not 0.0 <= self.follow_up_rate <= 1.0:
            raise ConfigError("follow_up_rate must be in [0, 1]")
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
        if self.val_protocol not in ("teacher-forced", "generate"):
            raise ConfigError("val_protocol must be 'teacher-forced' or 'generate'")
        if self.val_limit is not None and self.val_limit < 1:
            raise ConfigError("val_limit must be >= 1 (or null for the whole split)")
        if self.datasets is not None:
            from ..data.training_mix import validate_spec

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
