"""Building the model a run starts from, and choosing what it trains.

A run starts from one of (in this order of precedence, :func:`build_model_and_tokenizer`):

* ``init_from``: a GSVA checkpoint directory (:func:`gsva.checkpoint.load_model`);
* a named config on a pretrained base language model (``gsva-smol``, :func:`build_on_base`): the base, the vision
  tower of stage (a), the SAM of stage (c);
* ``llava_path`` + ``sam_checkpoint``: released LLaVA and SAM weights (the paper's configs,
  :func:`gsva.pretrained.build_from_components`);
* ``gsva-tiny``: everything from scratch, with a byte-level BPE tokenizer trained on the run's texts
  (:func:`tokenizer_corpus`).

A resumed run loads its newest checkpoint instead (:class:`gsva.training.trainer.Trainer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..checkpoint import load_model
from ..config import ConfigError, GSVAConfig, get_named_config
from ..data.describe import describe_texts
from ..data.grefcoco import GRefCOCO
from ..modeling.gsva_model import GSVAModel
from ..templates import ANSWER_STARTS, ANSWER_TEMPLATES, QUESTION_TEMPLATES, SYSTEM_PROMPT
from ..tokens import add_control_tokens
from ..trainable import set_trainable
from .recipe import TrainRecipe

__all__ = ["tokenizer_corpus", "build_model_and_tokenizer", "continuation_config", "build_on_base",
           "trainable_parameters"]

logger = logging.getLogger(__name__)


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
    """The model and tokenizer a fresh run starts from (see the module docstring). ``gref`` and ``texts`` feed the
    ``gsva-tiny`` tokenizer. Raises ConfigError for a recipe that names no usable start, CheckpointError for a bad
    ``init_from``."""
    if recipe.init_from:
        model, tokenizer = load_model(recipe.init_from)
        if recipe.model_overrides:
            model.config = continuation_config(model.config, recipe.model_overrides)
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
        from ..pretrained import build_from_components

        return build_from_components(config, recipe.llava_path, recipe.sam_checkpoint)
    if recipe.model != "gsva-tiny":
        raise ConfigError(f"{recipe.model} starts from pretrained weights: set llava_path and sam_checkpoint, "
                          "or init_from")
    from ..tokenizer_build import train_tokenizer

    corpus = tokenizer_corpus(gref, describe=recipe.caption_rate > 0, texts=texts)
    tokenizer = train_tokenizer(corpus, vocab_size=recipe.tokenizer_vocab_size)
    ids = add_control_tokens(tokenizer)
    config.text.vocab_size = recipe.tokenizer_vocab_size
    return GSVAModel(config, ids, len(tokenizer)), tokenizer


CONTINUATION_OVERRIDES = ("loss", "trainable", "reject_threshold")
"""The config sections ``model_overrides`` may change when a run continues from ``init_from``: those that no weight
shape depends on (loss weights, what trains, the decision threshold)."""


def continuation_config(config: GSVAConfig, overrides: dict) -> GSVAConfig:
    """``config`` with ``overrides`` merged in, for a run that continues from a checkpoint. Raises ConfigError for a
    section outside :data:`CONTINUATION_OVERRIDES` (an architecture change would not fit the loaded weights) and for
    values the config rejects."""
    bad = sorted(set(overrides) - set(CONTINUATION_OVERRIDES))
    if bad:
        raise ConfigError(f"model_overrides {bad} cannot change a model loaded by init_from; only "
                          f"{list(CONTINUATION_OVERRIDES)} can")
    merged = GSVAConfig.from_dict(_merge(config.to_dict(), overrides))
    logger.info("init_from with model_overrides %s", overrides)
    return merged


def build_on_base(config: GSVAConfig, recipe: TrainRecipe) -> tuple[GSVAModel, object]:
    """Stage (d)'s start: the base model, the stage-(a) vision tower (``vision_init``), the ``[SEG]``/``[REJ]``
    rows from ``slot_row_words`` and the SAM of ``sam_init`` (stage (c)'s ``sam.safetensors`` or a GSVA checkpoint
    directory whose ``sam.*`` weights have the same shapes). Raises CheckpointError for weights that do not fit."""
    from ..base_models import build_based_model
    from ..checkpoint import _check_keys, load_weights
    from ..modeling.base_weights import init_slot_rows
    from ..sam_pretrain import load_sam_weights
    from ..vision_pretrain import load_vision_weights

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


def trainable_parameters(model: GSVAModel, recipe: TrainRecipe) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` from the config's ``trainable`` section (:func:`gsva.trainable.set_trainable`) and
    return the parameters to optimise. On a base model only the rows added for our control tokens train
    (:func:`gsva.modeling.base_weights.train_added_rows_only`), so weight decay must be 0 (it would shrink the base
    rows, which are never saved). Raises ConfigError."""
    names = set_trainable(model, model.config.trainable)
    if model.config.text.base is not None:
        from ..modeling.base_weights import train_added_rows_only

        if recipe.weight_decay:
            raise ConfigError(f"{model.config.name} is built on a base model: weight_decay must be 0")
        train_added_rows_only(model)
    params = [p for p in model.parameters() if p.requires_grad]
    logger.info("trainable: %d tensors, %.2fM of %.2fM parameters", len(names),
                sum(p.numel() for p in params) / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
    return params


def _merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s values, nested dictionaries merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
