"""Stage (d6) of gsva-smol: train the object pointer's slot relations on a frozen GRES model.

Why a stage of its own: the relations (:class:`gsva.modeling.object_pointer.SlotRelations`) read only what the frozen
model already computes for every [SEG] (its hidden state, the object slots' states and their boxes), so they can be
trained on those inputs captured once, without running the 135M language model at every step:

1. load the stage-(d5) model (``init_from``) and give its pointer ``relation_layers`` fresh relation layers (their
   read-out starts at zero, so the new model starts with exactly the old one's logits);
2. capture the pointer's inputs teacher-forced on ``capture_batches`` GRES conversation batches of the train split
   and ``val_batches`` of the val split (:func:`capture_pointer_inputs`, one language-model forward per batch, no
   gradient); they are kept in ``<output_dir>/inputs_<split>.safetensors`` so that a resumed run does not capture
   again;
3. train the relations alone (everything else frozen, dropout on) with the pointer's BCE
   (:func:`gsva.modeling.object_pointer.pointer_loss`) under the stage loop (:mod:`gsva.training.stage_loop`:
   AdamW, warm-up then linear decay, resumable ``state.pt``, TensorBoard);
4. write the whole model (the loaded weights plus the relations) to ``<output_dir>/final``, a checkpoint like any
   other (``gsva export``, ``gsva eval``, ``GSVAPredictor``).

Validation: the share of [SEG] slots whose chosen object set (:func:`gsva.modeling.object_pointer.choose_objects`)
equals the target set, over all and per phrase family of the synthetic generator (:func:`phrase_family`).

Shape legend: N captured [SEG] slots, S object slots, D language-model width.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError
from .modeling.object_pointer import SlotRelations, choose_objects, pointer_loss, pointer_targets
from .modeling.seg_tokens import locate_slots
from .training.stage_loop import StageRecipe, StageTrainer

__all__ = ["PointerRecipe", "load_pointer_recipe", "add_slot_relations", "capture_pointer_inputs",
           "phrase_family", "slot_set_accuracy", "PointerTrainer"]

logger = logging.getLogger(__name__)

RELATIONS_PREFIX = "object_pointer.relations."
"""The model keys stage (d6) adds and trains."""

FAMILIES = ("position", "ordinal", "relation", "plural", "attribute")


@dataclass
class PointerRecipe(StageRecipe):
    """Stage (d6) recipe (:class:`gsva.training.stage_loop.StageRecipe` fields and these). ``init_from``: the GRES
    model directory to start from; ``relation_layers``: layers of the slot relations; ``capture_batches`` /
    ``val_batches``: GRES conversation batches of ``capture_batch_size`` images whose pointer inputs are captured
    from the train / val split; ``max_targets``: most expressions per conversation (as in stage (d))."""

    init_from: str = "runs/gsva-smol-d5/final"
    output_dir: str = "runs/gsva-smol-d6"
    relation_layers: int = 2
    capture_batches: int = 400
    val_batches: int = 60
    capture_batch_size: int = 8
    max_targets: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    precision: str = "fp32"

    def validate(self) -> "PointerRecipe":
        super().validate()
        for name in ("relation_layers", "capture_batches", "val_batches", "capture_batch_size", "max_targets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if not self.init_from:
            raise ConfigError("init_from must name the GRES model directory to start from")
        return self


def load_pointer_recipe(path: str | Path, overrides: list[str] | None = None) -> PointerRecipe:
    """Read a YAML stage-(d6) recipe with ``key=value`` overrides. Raises ConfigError."""
    from .training.recipe import load_recipe_as

    return load_recipe_as(PointerRecipe, path, overrides)


def add_slot_relations(model, layers: int) -> None:
    """Give ``model``'s object pointer ``layers`` fresh relation layers (in place; its config records them). Raises
    ConfigError for a model without the object pointer or whose pointer already has relations."""
    if not model.uses_object_pointer:
        raise ConfigError(f"{model.config.name} has no object pointer (seg_prompt "
                          f"{model.config.seg_prompt!r}): stage (d6) needs 'embedding_and_object_box'")
    if model.object_pointer.relations is not None:
        raise ConfigError("the model's object pointer already has slot relations")
    model.config.pointer_relation_layers = layers
    model.config.validate()
    model.object_pointer.relations = SlotRelations(model.object_pointer.width, layers).to(
        device=model.device, dtype=model.dtype)


@torch.no_grad()
def capture_pointer_inputs(model, batches) -> dict:
    """The object pointer's inputs for every [SEG] slot of ``batches`` (collated GRES batches with ground-truth
    masks), teacher-forced through the frozen model's named steps.

    Returns a dict: ``seg_hidden`` (N, D), ``states`` (N, S, D) float32; ``fractions`` (N, S, 4) float32 boxes as
    fractions of the image; ``present`` (N, S) bool; ``targets`` (N, S) float32 {0, 1}
    (:func:`gsva.modeling.object_pointer.pointer_targets`); ``phrases`` the N asked phrases.
    """
    was_training = model.training
    model.eval()
    out = {k: [] for k in ("seg_hidden", "states", "fractions", "present", "targets")}
    phrases: list[str] = []
    for i, batch in enumerate(batches, 1):
        if i % 50 == 0:
            logger.info("captured %d batches (%d [SEG] slots)", i, sum(len(t) for t in out["targets"]))
        batch = batch.to(model.device)
        feats, layout = model.image_tokens(batch.clip_pixels)
        hidden, _ = model.language_forward(model.embed_inputs(batch.input_ids, feats), batch.attention_mask)
        slots = locate_slots(batch.input_ids, model.token_ids.seg, model.token_ids.rej)
        rows = slots.batch_index[slots.is_seg]
        objects = model.object_slots(hidden, batch.input_ids, layout, batch.resized_hw).select(rows)
        named = [pointer_targets(layout.boxes[b].expand(len(m), -1, -1), layout.present[b].expand(len(m), -1), m)
                 for b, m in enumerate(batch.gt_masks)]
        out["seg_hidden"].append(hidden[rows, slots.predict_position[slots.is_seg]].float())
        out["states"].append(objects.states.float())
        out["fractions"].append(objects.fractions.float())
        out["present"].append(objects.present)
        out["targets"].append(torch.cat(named))
        for b, meta in enumerate(batch.meta):
            is_seg = slots.is_seg[slots.batch_index == b].tolist()
            if len(is_seg) != len(meta["phrases"]):
                raise ValueError(f"image {meta['image_id']}: {len(is_seg)} slots for {len(meta['phrases'])} phrases")
            phrases += [p for p, seg in zip(meta["phrases"], is_seg) if seg]
    model.train(was_training)
    result = {k: torch.cat(v).cpu() for k, v in out.items()}
    result["phrases"] = phrases
    return result


_FAMILY_PATTERNS = (
    ("ordinal", r"\b(second|third)\b"),
    ("position", r"\b(leftmost|rightmost|topmost|bottom)\b"),
    ("relation", r"\b(above|below|left of|right of)\b"),
    ("plural", r"^(the |all )?(\w+ )*(circles|squares|triangles|stars|hexagons|hearts|objects)$"),
)


def phrase_family(phrase: str) -> str:
    """The expression family of a phrase of the synthetic generator (:func:`gsva.data.synth.scene_expressions`):
    "ordinal" ("the second square from the left"), "position" ("the leftmost circle"), "relation" ("the heart left
    of the green hexagon"), "plural" ("all green objects", "the circles") or "attribute" (everything else)."""
    for family, pattern in _FAMILY_PATTERNS:
        if re.search(pattern, phrase.strip().lower()):
            return family
    return "attribute"


def slot_set_accuracy(logits: torch.Tensor, inputs: dict) -> dict[str, float]:
    """Share of the [SEG] slots that name at least one object whose chosen slot set equals the target set: ``all``
    and per family (``<family>`` and ``<family>_count``). ``logits`` (N, S)."""
    chosen = choose_objects(logits, inputs["present"])
    hits = {f: [0, 0] for f in ("all",) + FAMILIES}
    for sel, target, phrase in zip(chosen, inputs["targets"], inputs["phrases"]):
        if not bool(target.any()):
            continue
        ok = set(sel) == set(target.nonzero(as_tuple=True)[0].tolist())
        for f in ("all", phrase_family(phrase)):
            hits[f][0] += ok
            hits[f][1] += 1
    metrics = {}
    for f, (good, n) in hits.items():
        if n:
            metrics[f] = good / n
            metrics[f"{f}_count"] = float(n)
    return metrics


class _Inputs(torch.utils.data.Dataset):
    """Captured pointer inputs as a dataset of row indices (tensors are indexed in :meth:`PointerTrainer.loss`)."""

    def __init__(self, inputs: dict) -> None:
        keep = inputs["targets"].sum(1) > 0  # rows that name no slot carry no pointer loss
        self.rows = keep.nonzero(as_tuple=True)[0]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])


class _RelationsNet(nn.Module):
    """The trainable part (the relations) under the frozen pointer, as the stage loop's ``net``."""

    def __init__(self, pointer) -> None:
        super().__init__()
        self.relations = pointer.relations
        self._pointer = [pointer]  # not a submodule: its bilinear weights are not the stage's state

    def forward(self, inputs: dict, rows: torch.Tensor) -> torch.Tensor:
        return self._pointer[0](inputs["seg_hidden"][rows], inputs["states"][rows], inputs["present"][rows],
                                inputs["fractions"][rows])


class PointerTrainer(StageTrainer):
    """Runs a :class:`PointerRecipe` (see the module docstring)."""

    stage = "stage (d6) slot relations"

    def __init__(self, recipe: PointerRecipe) -> None:
        from .checkpoint import load_model
        from .training.data import endless_batches

        recipe.validate()
        self._open(recipe)
        self.model, self.tokenizer = load_model(recipe.init_from)
        self.model.requires_grad_(False)
        add_slot_relations(self.model, recipe.relation_layers)
        self.net = _RelationsNet(self.model.object_pointer)
        self._setup(recipe, list(self.net.relations.parameters()))
        self.model.to(self.device)
        self.inputs = {}
        for split, n, seed in ((recipe.train_split, recipe.capture_batches, recipe.seed),
                               (recipe.val_split, recipe.val_batches, recipe.seed + 1)):
            path = self.out / f"inputs_{split}.safetensors"
            if path.is_file():
                self.inputs[split] = _read_inputs(path)
                logger.info("pointer inputs of %s read from %s (%d slots)", split, path,
                            len(self.inputs[split]["phrases"]))
                continue
            data = self._conversations(split, seed)
            batches = itertools.islice(endless_batches(data, recipe.capture_batch_size, 0, 1, seed,
                                                       recipe.num_workers), n)
            logger.info("capturing the pointer inputs of %d %s batches", n, split)
            self.inputs[split] = capture_pointer_inputs(self.model, batches)
            _write_inputs(path, self.inputs[split])
        self.inputs = {k: {n: (t.to(self.device) if isinstance(t, torch.Tensor) else t) for n, t in v.items()}
                       for k, v in self.inputs.items()}

    def _conversations(self, split: str, seed: int):
        from .data.gres_dataset import GRESConversationDataset
        from .tokens import add_control_tokens

        return GRESConversationDataset(self.gref, split, self.tokenizer, add_control_tokens(self.tokenizer),
                                       self.model.config, max_targets=self.recipe.max_targets, seed=seed)

    def dataset(self, split: str, augment: bool) -> torch.utils.data.Dataset:
        data = _Inputs(self.inputs[split])
        if len(data) < self.recipe.batch_size:
            raise ConfigError(f"only {len(data)} captured [SEG] slots of {split} name an object, fewer than "
                              f"batch_size {self.recipe.batch_size}: raise capture_batches")
        return data

    @staticmethod
    def collate(items):
        return torch.tensor(items, dtype=torch.long)

    def batch_to_device(self, batch):
        return batch.to(self.device)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        inputs = self.inputs[self.recipe.train_split]
        return pointer_loss(self.net(inputs, rows), inputs["targets"][rows], inputs["present"][rows])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        inputs = self.inputs[self.recipe.val_split]
        self.net.eval()
        logits = self.net(inputs, torch.arange(len(inputs["phrases"]), device=self.device))
        self.net.train()
        return slot_set_accuracy(logits, inputs)

    def write_outputs(self, metrics: dict[str, float]) -> Path:
        from .checkpoint import save_model

        final = self.out / "final"
        save_model(self.model, self.tokenizer, final)
        (self.out / "pointer.json").write_text(json.dumps({"init_from": self.recipe.init_from, "steps": self.step,
                                                           "val": metrics}, indent=2) + "\n")
        return final


def _write_inputs(path: Path, inputs: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tensors = {k: v.contiguous() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, str(tmp), metadata={"phrases": json.dumps(inputs["phrases"])})
    tmp.replace(path)


def _read_inputs(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        phrases = json.loads(f.metadata()["phrases"])
    inputs = dict(load_file(str(path)))
    inputs["phrases"] = phrases
    return inputs
