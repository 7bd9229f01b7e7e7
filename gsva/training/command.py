"""``gsva train``: train GSVA from a YAML recipe (also ``python train/pretrain.py``).

Plain PyTorch (CPU or one GPU)::

    gsva train --config train/configs/gsva_tiny_synth.yaml [key=value ...]

DeepSpeed ZeRO-2 (``ds_configs/zero2.json``; on CPU it uses the gloo backend, 1 or 2 processes)::

    deepspeed --num_gpus 1 train/pretrain.py --config train/configs/gsva_tiny_synth.yaml

Several GPUs and nodes (a DeepSpeed hostfile has one ``<host> slots=<gpus>`` line per node; every node needs the
same code, data paths and passwordless ssh from the first)::

    deepspeed --num_gpus 8 train/pretrain.py --config train/configs/gsva_vicuna7b_pretrain.yaml
    deepspeed --hostfile hostfile --master_addr <first host> train/pretrain.py --config ...

Small GPUs: ``deepspeed_config=ds_configs/zero2_offload.json`` (optimizer state in CPU memory) or
``ds_configs/zero3.json`` (parameters partitioned too; no validation during training), and
``gradient_checkpointing=true``.

A run resumes by itself from the newest complete checkpoint in ``output_dir``. The final model is written to
``<output_dir>/final`` in the GSVA checkpoint format (loads in ``gsva predict --model`` and the app). A bad recipe
exits with status 2 and one ``error:`` line.

The command is the recipe in three parts, as torchtune's recipes: :func:`setup` (recipe, process group, trainer),
:func:`train` (the steps of :meth:`gsva.training.trainer.Trainer.steps`, logged) and :func:`save` (the final model).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path

__all__ = ["main", "setup", "train", "save"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsva train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe (train/configs/*.yaml)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument("overrides", nargs="*", help="recipe overrides as key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, write ``<output_dir>/final``; 0 on success, 2 on a user error."""
    from ..errors import report_user_errors

    args = _parser().parse_args(argv)
    return report_user_errors(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    trainer, metrics = setup(args)
    train(trainer, metrics)
    save(trainer, metrics)
    return 0


def setup(args: argparse.Namespace):
    """Read the recipe, join the DeepSpeed process group when launched by it, build the :class:`Trainer` (resuming
    from the newest complete checkpoint) and, on rank 0, the metrics logger."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not os.environ.get("CUDA_VISIBLE_DEVICES") else "cuda")
    from .metrics_logger import MetricsLogger
    from .recipe import load_recipe
    from .trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(args.config, args.overrides)
    use_deepspeed = args.local_rank is not None or "LOCAL_RANK" in os.environ
    if use_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo" if os.environ.get("DS_ACCELERATOR") == "cpu" else None)
    trainer = Trainer(recipe, use_deepspeed=use_deepspeed)
    recipe = trainer.recipe  # ``epochs`` resolved to max_steps
    metrics = None
    if trainer.rank == 0:
        metrics = MetricsLogger(Path(recipe.output_dir) / "tensorboard" if recipe.tensorboard else None,
                                recipe.wandb_project, dataclasses.asdict(recipe))
    return trainer, metrics


def train(trainer, metrics) -> None:
    """Run the steps, with a progress bar, a log line every ``log_every`` steps and the metrics of each step."""
    from tqdm import tqdm

    recipe = trainer.recipe
    log = logging.getLogger("train")
    bar = tqdm(total=recipe.max_steps, initial=trainer.start_step, disable=trainer.rank != 0, dynamic_ncols=True)
    start = time.time()
    for entry in trainer.steps():
        bar.update(1)
        bar.set_postfix(loss=f"{entry.loss:.3f}", ce=f"{entry.ce:.3f}", lr=f"{entry.lr:.2e}")
        if metrics is not None:
            metrics.step(entry)
        if trainer.rank == 0 and (entry.step % recipe.log_every == 0 or entry.step == recipe.max_steps):
            log.info("step %d loss %.4f ce %.4f bce %.4f dice %.4f point %.4f pointer %.4f lr %.3e masks %d "
                     "bad records %d (%.1f s)", entry.step, entry.loss, entry.ce, entry.mask_bce, entry.mask_dice,
                     entry.point_mask, entry.pointer, entry.lr, entry.num_masks, entry.bad_records,
                     time.time() - start)
    bar.close()


def save(trainer, metrics) -> None:
    """Write ``<output_dir>/final`` (all ranks take part) and close the metrics logger."""
    if metrics is not None:
        metrics.close()
    final = trainer.save_final()
    if trainer.rank == 0:
        logging.getLogger("train").info("final model written to %s", final)
