"""Training GSVA: small parts under a short loop.

=====================  ===========================================================================================
``recipe.py``          :class:`TrainRecipe`, the YAML recipe (typed, validated, ``key=value`` overrides)
``model_setup.py``     the model a run starts from (checkpoint, base model, released weights, from scratch) and the
                       parameters it trains
``data.py``            the dataset a recipe names and the endless, resumable batch stream of one process
``schedule.py``        linear warm-up then linear decay (DeepSpeed ``WarmupDecayLR``)
``backends.py``        one optimizer step: plain PyTorch or a DeepSpeed ZeRO engine; non-finite steps
``checkpointer.py``    step checkpoints with rotation, the best one, the final model; finding the one to resume from
``validation.py``      validation during training and the metric that picks the best checkpoint
``metrics_logger.py``  TensorBoard / Weights & Biases scalars
``trainer.py``         :class:`Trainer`: the loop, yielding a :class:`StepLog` per optimizer step
``command.py``         ``gsva train`` (and ``train/pretrain.py``, ``deepspeed train/pretrain.py``)
``stage_loop.py``      the loop of the single-module pretraining stages of ``gsva-smol`` (vision tower, SAM)
=====================  ===========================================================================================

Process groups (rank, world, collectives) are in :mod:`gsva.distributed`, shared with evaluation.
"""

from .checkpointer import latest_checkpoint
from .recipe import TrainRecipe, load_recipe, load_recipe_as
from .schedule import lr_multiplier
from .trainer import StepLog, Trainer

__all__ = ["TrainRecipe", "load_recipe", "load_recipe_as", "Trainer", "StepLog", "latest_checkpoint",
           "lr_multiplier"]
