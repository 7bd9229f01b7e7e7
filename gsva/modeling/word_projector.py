"""Word projector: each image patch becomes the language model's own embeddings of the words the tower reads there.

Why (measured; docs/gsva-smol.md): in front of a pretrained language model, image tokens that
are exactly the embeddings of the words they depict are matched against a question within about a hundred
fine-tuning steps, while continuous tokens carrying the same information (learned projectors, even blends of the
right words' embeddings) stayed at chance for several times as long. So the projector classifies every patch into
one word of each group of :attr:`gsva.config.VisionConfig.word_groups` (e.g. size, colour, shape) and emits the
embedding rows of the chosen words, plus a learned per-patch position vector (zero at initialisation) that lets the
answer's ``[SEG]`` hidden state carry where the matched words were. It is LLaVA's alignment objective taken to its
end: the tokens do not approximate word embeddings, they are word embeddings.

Shape legend: B images, P patches (row-major, (image_size / patch_size)^2), Dv tower width, G word groups,
K_g words in group g, K = sum K_g, D language-model width, T = P x G image tokens.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchWordReader", "WordProjector"]


class PatchWordReader(nn.Module):
    """Reads one word of each group in every patch: LayerNorm + Linear classifier over the tower features.

    Args:
        vision_hidden: Dv. text_hidden: D. group_sizes: (K_1, ..., K_G). extra_words: rows kept after the K word
            rows of ``word_embeddings`` (e.g. a separator).

    ``word_embeddings`` (K + extra_words, D) is a non-persistent buffer that :meth:`set_word_embeddings` fills from
    the language model's input embeddings (it is never saved: the rows come from the base model); until then it is
    zero. :meth:`word_logits` gives the classifier's logits for the dense tower loss; the projectors take the
    argmax word of each group (no gradient reaches the classifier through it; the tower is trained by
    :func:`gsva.vision_pretrain.patch_word_loss`).
    """

    def __init__(self, vision_hidden: int, text_hidden: int, group_sizes: list[int], extra_words: int = 0) -> None:
        super().__init__()
        if not group_sizes or min(group_sizes) < 2:
            raise ValueError(f"every word group needs >= 2 words, got sizes {group_sizes}")
        self.group_sizes = list(group_sizes)
        self.norm = nn.LayerNorm(vision_hidden)
        self.classifier = nn.Linear(vision_hidden, sum(group_sizes))
        self.register_buffer("word_embeddings", torch.zeros(sum(group_sizes) + extra_words, text_hidden),
                             persistent=False)
        offsets = torch.tensor([0] + group_sizes[:-1]).cumsum(0)
        self.register_buffer("group_offsets", offsets, persistent=False)

    def set_word_embeddings(self, rows: torch.Tensor) -> None:
        """Copy the (K + extra_words, D) embedding rows of the words, group by group in config order, then the
        extra words."""
        if tuple(rows.shape) != tuple(self.word_embeddings.shape):
            raise ValueError(f"word embeddings {tuple(rows.shape)} != {tuple(self.word_embeddings.shape)}")
        self.word_embeddings.copy_(rows.detach().to(self.word_embeddings))

    def word_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Per group g, logits (B, P, K_g) over its words (unnormalised)."""
        return list(self.classifier(self.norm(features)).split(self.group_sizes, dim=-1))

    def words(self, features: torch.Tensor) -> torch.Tensor:
        """The chosen word of each group, (B, P, G) int64 indices into group g's list."""
        return torch.stack([logits.argmax(-1) for logits in self.word_logits(features)], dim=-1)



class WordProjector(PatchWordReader):
    """(B, P, Dv) tower features -> (B, P * G, D) image tokens: patch p's tokens are at positions p*G .. p*G+G-1,
    the embeddings of the words read in patch p plus a learned per-patch position vector (zero at initialisation).

    Args:
        vision_hidden: Dv. text_hidden: D. num_patches: P. group_sizes: (K_1, ..., K_G).
    """

    def __init__(self, vision_hidden: int, text_hidden: int, num_patches: int, group_sizes: list[int]) -> None:
        super().__init__(vision_hidden, text_hidden, group_sizes)
        self.position = nn.Parameter(torch.zeros(num_patches, text_hidden))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rows = self.words(features) + self.group_offsets  # (B, P, G) rows of word_embeddings
        tokens = self.word_embeddings[rows] + self.position[None, :, None, :].to(self.word_embeddings.dtype)
        b, p, g, d = tokens.shape
        return tokens.reshape(b, p * g, d)
