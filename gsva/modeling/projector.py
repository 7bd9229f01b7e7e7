"""The [SEG] projector: LLM hidden state -> SAM sparse prompt embedding (official ``text_hidden_fcs``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SegProjector"]


class SegProjector(nn.Module):
    """Linear(D, D) -> ReLU -> Linear(D, C) (official: ``text_hidden_fcs.0`` = Sequential(Linear, ReLU, Linear,
    Dropout(0.0)); the zero dropout is omitted, the Linear layers keep the official indices 0 and 2).

    Input (N, D) LLM last-layer hidden states; output (N, C) sparse prompt embeddings, C = SAM prompt dim (256).
    """

    def __init__(self, hidden_size: int, prompt_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(inplace=True),
                                    nn.Linear(hidden_size, prompt_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden)
