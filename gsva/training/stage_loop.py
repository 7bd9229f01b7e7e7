"""The loop shared by the single-module pretraining stages of ``gsva-smol`` (stage (a) vision tower, stage (c) SAM).

A stage trains one sub-network with AdamW under linear warm-up then linear decay, logs to the ``logging`` module and
TensorBoard, checkpoints ``<output_dir>/state.pt`` (tensors and numbers only, loaded with ``weights_only=True``) every
``save_every`` steps so that a killed run resumes from its last saved step (the interrupted pass over the data starts
again from its beginning, in a new order), validates at each save, and writes its output at the end. Subclasses say
what the network, the data, the loss, the validation and the output are.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..devices import autocast_for, resolve_device, to_device
from .schedule import warmup_linear_decay

__all__ = ["StageRecipe", "StageTrainer", "load_stage_weights", "IndexDataset"]

logger = logging.getLogger(__name__)


@dataclass
class StageRecipe:
    """The fields every stage recipe has (YAML; unknown keys are errors); a stage's recipe subclasses it and may
    change the defaults. ``torch_threads`` 0: torch's default. ``precision``: "bf16" runs the forward pass under
    CPU bf16 autocast, "fp32" without (CPUs without AVX512-BF16 emulate bf16 matmuls slowly: gsva-smol's stage (d)
    measured 188 s/step bf16 vs 7.2 s fp32 on an AVX2 EPYC); on a GPU bf16 autocast is the fast choice.
    ``device``: "auto" (the first CUDA device if torch sees one, else the CPU), "cpu", "cuda" or "cuda:N"
    (:mod:`gsva.devices`)."""

    model: str = "gsva-smol"
    data_root: str = "data/synth"
    train_split: str = "train"
    val_split: str = "val"
    output_dir: str = "runs/stage"
    seed: int = 0
    max_steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    log_every: int = 50
    save_every: int = 500
    val_images: int = 200
    num_workers: int = 1
    torch_threads: int = 0
    tensorboard: bool = True
    precision: str = "bf16"
    device: str = "auto"

    def validate(self):
        """Check the shared fields; return ``self``. Raises :class:`gsva.config.ConfigError`."""
        from ..config import ConfigError, get_named_config
        from ..devices import check_device_name

        for name in ("max_steps", "batch_size", "log_every", "save_every", "val_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        check_device_name(self.device)
        get_named_config(self.model)
        return self


class IndexDataset(torch.utils.data.Dataset):
    """Indices 0 .. count - 1, for stages whose samples were captured into tensors (the loop shuffles and batches
    the indices; ``epoch`` is set by the loop)."""

    def __init__(self, count: int) -> None:
        self.count, self.epoch = count, 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> int:
        return i


def load_stage_weights(model: nn.Module, path: str | Path, prefixes: tuple[str, ...]) -> None:
    """Copy a stage's safetensors output into ``model``: exactly the model keys that start with one of
    ``prefixes``, with the same shapes. Raises :class:`gsva.checkpoint.CheckpointError`."""
    from ..checkpoint import CheckpointError, _check_keys

    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise CheckpointError(f"{path}: cannot read the stage weights ({exc})") from None
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    _check_keys(expected, state, path)
    with torch.no_grad():
        for k, v in state.items():
            expected[k].copy_(v)


class StageTrainer:
    """Runs one stage recipe. The recipe needs ``output_dir, seed, max_steps, batch_size, lr, weight_decay,
    warmup_steps, log_every, save_every, num_workers, torch_threads, tensorboard, train_split``.

    Subclasses call :meth:`_open` (threads, seed, ``self.config``, ``self.gref``), set ``self.net``, call
    :meth:`_setup` with the parameters to train, and implement :meth:`dataset`, :meth:`collate`, :meth:`loss`,
    :meth:`evaluate` and :meth:`write_outputs` (with :meth:`_write_output`).
    """

    stage = "stage"

    def _open(self, recipe) -> None:
        from ..config import get_named_config
        from ..data.grefcoco import GRefCOCO
        from ..data.refer import default_image_dir

        if recipe.torch_threads:
            torch.set_num_threads(recipe.torch_threads)
        torch.manual_seed(recipe.seed)
        self.config = get_named_config(recipe.model)
        root = Path(recipe.data_root)
        self.gref = GRefCOCO(root / "grefcoco", default_image_dir(root, "grefcoco"))

    def _write_output(self, name: str, state: dict[str, torch.Tensor], metrics: dict[str, float]) -> Path:
        """``<name>.safetensors`` (``state``) + ``<name>.json`` (config name, steps, ``metrics``); returns the
        safetensors path."""
        from safetensors.torch import save_file

        path = self.out / f"{name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path),
                  metadata={"gsva_config": self.recipe.model, "stage": name})
        (self.out / f"{name}.json").write_text(json.dumps({"model": self.recipe.model, "steps": self.step,
                                                           "val": metrics}, indent=2) + "\n")
        return path

    def _setup(self, recipe, params: list[nn.Parameter]) -> None:
        self.recipe = recipe
        self.device = resolve_device(recipe.device)
        self.net.to(self.device)  # in place: ``params`` stay the module's parameters
        logger.info("%s trains on %s", self.stage, self.device)
        self.out = Path(recipe.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.scheduler = warmup_linear_decay(self.optimizer, recipe.warmup_steps, recipe.max_steps)
        self.step = 0
        state_path = self.out / "state.pt"
        if state_path.is_file():
            state = torch.load(state_path, weights_only=True, map_location="cpu")
            self.net.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = state["step"]
            logger.info("resuming %s from step %d", self.stage, self.step)

    def autocast(self):
        """The forward pass's precision context (``recipe.precision``, for the device's type)."""
        return autocast_for(self.device, self.recipe.precision)

    def batch_to_device(self, batch):
        """A collated batch (tensors, possibly in tuples/lists) on the stage's device."""
        return to_device(batch, self.device)

    # -- what a stage defines ------------------------------------------------------------------------------------
    def dataset(self, split: str, augment: bool) -> torch.utils.data.Dataset:
        raise NotImplementedError

    @staticmethod
    def collate(items):
        raise NotImplementedError

    def loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def write_outputs(self, metrics: dict[str, float]) -> Path:
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------------------------
    def _save_state(self) -> None:
        tmp = self.out / "state.pt.tmp"
        torch.save({"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "step": self.step}, tmp)
        os.replace(tmp, self.out / "state.pt")

    def run(self) -> Path:
        """Train to ``max_steps`` (resuming from ``state.pt``); write the outputs; return the weights' path."""
        r = self.recipe
        writer = None
        if r.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tensorboard"))
        data = self.dataset(r.train_split, augment=True)
        self.net.train()
        epoch = self.step * r.batch_size // max(len(data), 1)
        while self.step < r.max_steps:
            data.epoch = epoch
            loader = torch.utils.data.DataLoader(data, batch_size=r.batch_size, shuffle=True, drop_last=True,
                                                 num_workers=r.num_workers, collate_fn=self.collate,
                                                 generator=torch.Generator().manual_seed(r.seed + epoch))
            for batch in loader:
                if self.step >= r.max_steps:
                    break
                loss = self.loss(self.batch_to_device(batch))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                if self.step % r.log_every == 0:
                    logger.info("step %d/%d loss %.4f lr %.2e", self.step, r.max_steps, loss.item(),
                                self.scheduler.get_last_lr()[0])
                    if writer:
                        writer.add_scalar("train/loss", loss.item(), self.step)
                if self.step % r.save_every == 0 or self.step == r.max_steps:
                    self._save_state()
                    metrics = self.evaluate()
                    logger.info("step %d val %s", self.step, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
                    if writer:
                        for k, v in metrics.items():
                            writer.add_scalar(f"val/{k}", v, self.step)
            epoch += 1
        path = self.write_outputs(self.evaluate())
        if writer:
            writer.close()
        return path
