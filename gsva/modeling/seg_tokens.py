"""Locate ``[SEG]``/``[REJ]`` slots in image-expanded ``input_ids``.

Because the image placeholder is expanded to T ids inside ``input_ids``, hidden states align 1:1 with tokens and no
offset is needed (the official code prepends Np-1 = 255 False values instead).

The embedding of a slot is the last-layer hidden state at the position that *predicts* the slot token, i.e. the
token before it (official ``modeling_lisa_gsva.py``: ``seg_mask = input_ids[:, 1:] == [SEG]`` padded at the end).
Released GSVA/LISA weights were trained with this choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Slots", "locate_slots"]


@dataclass
class Slots:
    """All slots of a batch, in reading order (row-major: batch row, then position).

    Shapes (S = number of slots in the batch): ``batch_index`` (S,) int64 row of each slot; ``token_position`` (S,)
    int64 position of the ``[SEG]``/``[REJ]`` token; ``predict_position`` (S,) = token_position - 1, the position
    whose hidden state is the slot's embedding; ``is_seg`` (S,) bool, True for ``[SEG]``.
    """

    batch_index: torch.Tensor
    token_position: torch.Tensor
    predict_position: torch.Tensor
    is_seg: torch.Tensor

    def __len__(self) -> int:
        return int(self.batch_index.numel())

    def counts(self, batch_size: int) -> torch.Tensor:
        """Slots per row, (B,) int64."""
        return torch.bincount(self.batch_index, minlength=batch_size)


def locate_slots(input_ids: torch.Tensor, seg_id: int, rej_id: int) -> Slots:
    """Find every ``[SEG]`` and ``[REJ]`` in ``input_ids`` (B, L) int64.

    Raises ValueError if a slot token stands at position 0 (nothing precedes it to predict it).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
    is_slot = (input_ids == seg_id) | (input_ids == rej_id)
    if is_slot[:, 0].any():
        raise ValueError("a [SEG]/[REJ] token at position 0 has no predicting position")
    batch_index, token_position = is_slot.nonzero(as_tuple=True)
    return Slots(
        batch_index=batch_index,
        token_position=token_position,
        predict_position=token_position - 1,
        is_seg=input_ids[batch_index, token_position] == seg_id,
    )
