"""Object-word projector: the image becomes a short list of objects, each written as the words the tower reads.

Why (measured with SmolLM2 on presence and conjunction questions, docs/gsva-smol.md): the pretrained
language model matches a question against a scene written in words ("a red square, a blue circle") within about a
hundred fine-tuning steps; the same words laid out as a patch grid (one token per word group per patch, most of them
"background") took about three times as long for conjunctions, and our 192-token grid did not get there in 250
steps of GRES fine-tuning. So the patch words are grouped into objects before the language model sees them:

1. the tower reads one word of each group in every patch (:class:`gsva.modeling.word_projector.PatchWordReader`);
2. patches that read the same non-background word of the ``object_group`` (the colour, for ``gsva-smol``) and touch
   (4-neighbourhood on the patch grid) are one object;
3. each object's word in every group is read by :class:`CropWordReader`, a small CNN, from a square crop of the
   pixels around the object's patches (:func:`object_crops`), because reading shapes from the 20-pixel patches is the
   tower's weak point (measured: shape read right on 0.56 of object patches, and 0.55 of objects when the patches
   vote); without pixels the patches vote (argmax of the summed log-probabilities over the group's words other than
   "background");
4. the ``max_objects`` largest objects (most patches; ties: reading order) are written left to right (then top to
   bottom) as ``word_1 .. word_G separator``; the remaining slots are the groups' "background" words and the
   separator, so every image has the same number of tokens.

Every token of an object also carries a fixed 2D sinusoidal code of the object's centre (:func:`position_code`),
scaled to ``position_scale`` root-mean-square, so that the ``[SEG]`` hidden state can carry where the matched object
is; free slots carry none. The rows are the language model's own input embeddings (never trained here).
:meth:`ObjectWordProjector.encode` also returns where each slot's object is (:class:`ObjectLayout`), for the object
pointer (:mod:`gsva.modeling.object_pointer`).

Shape legend: B images, P patches (row-major, side x side), Dv tower width, G word groups, K_g words in group g,
K = sum K_g, D language-model width, S = ``max_objects``, T = S x (G + 1) image tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .word_projector import PatchWordReader

__all__ = ["ObjectWordProjector", "ObjectLayout", "CropWordReader", "patch_components", "object_crops", "position_code",
           "CROP_SIZE"]

CROP_SIZE = 32
"""Side in pixels of the object crops :class:`CropWordReader` reads."""


def patch_components(labels: torch.Tensor, background: int) -> list[list[int]]:
    """Connected groups of equal non-background labels on a square patch grid.

    Args:
        labels: (P,) int64 patch labels, row-major over a side x side grid (P = side^2).
        background: the label that belongs to no object.

    Returns:
        Per object, its patch indices in increasing order; objects ordered by their first patch (reading order).
        Raises ValueError when P is not a square.
    """
    side = math.isqrt(labels.numel())
    if side * side != labels.numel():
        raise ValueError(f"{labels.numel()} patches do not form a square grid")
    grid = labels.tolist()
    seen = [False] * len(grid)
    objects = []
    for start, label in enumerate(grid):
        if label == background or seen[start]:
            continue
        seen[start], stack, members = True, [start], []
        while stack:
            p = stack.pop()
            members.append(p)
            r, c = divmod(p, side)
            for q, ok in ((p - side, r > 0), (p + side, r < side - 1), (p - 1, c > 0), (p + 1, c < side - 1)):
                if ok and not seen[q] and grid[q] == label:
                    seen[q] = True
                    stack.append(q)
        objects.append(sorted(members))
    return objects


def object_crops(pixels: torch.Tensor, objects: list[list[int]], side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Square crops of one image around each object's patches, resized to CROP_SIZE x CROP_SIZE.

    Args:
        pixels: (3, s, s) the tower's input (any normalisation). objects: per object its patch indices (row-major
            over a side x side grid, as :func:`patch_components` returns). side: patches per row.

    Returns:
        (crops (n, 3, CROP_SIZE, CROP_SIZE) in the dtype of ``pixels``, extents (n, 2) float32: the width and height
        of the objects' patch boxes as image fractions). The crop is the square around the patch box's centre whose
        side is the box's longer side plus one patch, shifted to stay inside the image; bilinear resize.
    """
    s = pixels.shape[-1]
    patch = s // side
    crops, extents = [], []
    for members in objects:
        rows = [p // side for p in members]
        cols = [p % side for p in members]
        r0, r1, c0, c1 = min(rows), max(rows) + 1, min(cols), max(cols) + 1
        extent = min(side, max(r1 - r0, c1 - c0) + 1) * patch
        cy, cx = (r0 + r1) * patch // 2, (c0 + c1) * patch // 2
        y0 = max(0, min(s - extent, cy - extent // 2))
        x0 = max(0, min(s - extent, cx - extent // 2))
        crop = pixels[:, y0:y0 + extent, x0:x0 + extent].float()[None]
        crops.append(F.interpolate(crop, (CROP_SIZE, CROP_SIZE), mode="bilinear", align_corners=False)[0])
        extents.append(((c1 - c0) / side, (r1 - r0) / side))
    if not crops:
        return pixels.new_zeros((0, 3, CROP_SIZE, CROP_SIZE)), torch.zeros((0, 2), device=pixels.device)
    return torch.stack(crops).to(pixels.dtype), torch.tensor(extents, dtype=torch.float32, device=pixels.device)


class CropWordReader(nn.Module):
    """A small CNN: object crops (n, 3, CROP_SIZE, CROP_SIZE) and patch-box extents (n, 2) -> per group g, logits
    (n, K_g) over its words (unnormalised). Three 3x3 conv + GELU + 2x2 max-pool blocks (32, 64, 128 channels),
    then the flattened map and the extents through a 2-layer MLP (width 256)."""

    def __init__(self, group_sizes: list[int]) -> None:
        super().__init__()
        self.group_sizes = list(group_sizes)
        blocks, width = [], 3
        for out in (32, 64, 128):
            blocks += [nn.Conv2d(width, out, 3, padding=1), nn.GELU(), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*blocks)
        cells = (CROP_SIZE // 8) ** 2 * width
        self.head = nn.Sequential(nn.Linear(cells + 2, 256), nn.GELU(), nn.Linear(256, sum(group_sizes)))

    def forward(self, crops: torch.Tensor, extents: torch.Tensor) -> list[torch.Tensor]:
        x = self.features(crops).flatten(1)
        x = torch.cat([x, extents.to(x)], dim=1)
        return list(self.head(x).split(self.group_sizes, dim=-1))


def position_code(xy: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Fixed 2D sinusoidal code of points: (N, 2) (x, y) in [0, 1] (image fraction, origin top-left) -> (N, dim).

    The first half codes x, the second y, each as [sin(w_k t), cos(w_k t)] with dim / 4 frequencies w_k from pi to
    16 pi (geometric); the whole code is scaled to root-mean-square ``scale`` (every entry of sin^2 + cos^2 pairs
    sums to 1, so the RMS of the unscaled code is 1 / sqrt(2)). Raises ValueError unless dim is a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"position code width {dim} is not a multiple of 4")
    k = dim // 4
    freqs = math.pi * torch.logspace(0, 4, k, base=2.0, dtype=torch.float32, device=xy.device)
    angles = xy.float()[:, :, None] * freqs  # (N, 2, k)
    code = torch.cat([angles[:, 0].sin(), angles[:, 0].cos(), angles[:, 1].sin(), angles[:, 1].cos()], dim=-1)
    return code * (scale * math.sqrt(2.0))


@dataclass
class ObjectLayout:
    """Where the objects written into the image tokens are, slot by slot (slot s = tokens s (G + 1) .. s (G + 1) + G).

    ``boxes`` (B, S, 4) float32 (x0, y0, x1, y1) of each object's patch box as fractions of the tower's input
    (origin top-left; 0 for free slots); ``present`` (B, S) bool, True where the slot holds an object.
    """

    boxes: torch.Tensor
    present: torch.Tensor


class ObjectWordProjector(PatchWordReader):
    """(B, P, Dv) tower features -> (B, S * (G + 1), D) image tokens, the objects the tower reads, in words.

    Args:
        vision_hidden: Dv. text_hidden: D (a multiple of 4). num_patches: P (a square). group_sizes: (K_1, ..., K_G);
            each group's last word is its "background". max_objects: S >= 1. object_group: index of the group whose
            words split patches into objects. position_scale: RMS of the position code added to an object's tokens
            (0: none).

    ``word_embeddings`` holds the K word rows then the separator's row (:meth:`set_word_embeddings`).
    ``crop_reader`` (:class:`CropWordReader`) reads the objects' words when the forward pass is given the pixels.
    """

    def __init__(self, vision_hidden: int, text_hidden: int, num_patches: int, group_sizes: list[int],
                 max_objects: int, object_group: int, position_scale: float) -> None:
        super().__init__(vision_hidden, text_hidden, group_sizes, extra_words=1)
        if max_objects < 1 or not 0 <= object_group < len(group_sizes):
            raise ValueError(f"max_objects {max_objects} must be >= 1 and object_group {object_group} index a group")
        self.num_patches, self.max_objects = num_patches, max_objects
        self.object_group, self.position_scale = object_group, position_scale
        self.side = math.isqrt(num_patches)
        if self.side * self.side != num_patches or text_hidden % 4:
            raise ValueError(f"{num_patches} patches must form a square and width {text_hidden} be a multiple of 4")
        self.crop_reader = CropWordReader(group_sizes)

    @property
    def tokens_per_object(self) -> int:
        return len(self.group_sizes) + 1

    def read_objects(self, features: torch.Tensor, pixels: torch.Tensor | None = None) -> list[list[dict]]:
        """Per image, the objects written into its tokens (left to right): ``{"words": [index in group g, ...],
        "probs": [(n_g,) float32 probabilities of group g's words (background left out), ...], "patches": [patch
        indices], "center": (x, y) and "box": (x0, y0, x1, y1) in [0, 1] image fractions (the patch box)}``. ``pixels`` (B, 3, s, s), the tower's input: words from :attr:`crop_reader`; None: from the
        patches' votes."""
        log_probs = [lg.float().log_softmax(-1) for lg in self.word_logits(features)]
        keys = log_probs[self.object_group].argmax(-1)  # (B, P)
        background = self.group_sizes[self.object_group] - 1
        out = []
        for b in range(features.shape[0]):
            comps = patch_components(keys[b], background)
            comps = sorted(comps, key=len, reverse=True)[: self.max_objects]
            if pixels is not None and comps:
                crops, extents = object_crops(pixels[b], comps, self.side)
                votes = [lg.float()[:, :-1] for lg in self.crop_reader(crops, extents.to(crops.device))]
            else:
                votes = [torch.stack([lp[b, m, :-1].sum(0) for m in comps]) if comps else None for lp in log_probs]
            objects = []
            for j, members in enumerate(comps):
                idx = torch.tensor(members, device=features.device)
                words = [int(v[j].argmax()) for v in votes]
                probs = [v[j].softmax(-1) for v in votes]
                rows, cols = idx // self.side, idx % self.side
                center = (float((cols.float() + 0.5).mean()) / self.side,
                          float((rows.float() + 0.5).mean()) / self.side)
                box = (int(cols.min()) / self.side, int(rows.min()) / self.side,
                       (int(cols.max()) + 1) / self.side, (int(rows.max()) + 1) / self.side)
                objects.append({"words": words, "probs": probs, "patches": members, "center": center, "box": box})
            out.append(sorted(objects, key=lambda o: (o["center"][0], o["center"][1])))
        return out

    def forward(self, features: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P, Dv) features (and the (B, 3, s, s) pixels) -> (B, T, D) image tokens; see :meth:`encode`."""
        return self.encode(features, pixels)[0]

    def encode(self, features: torch.Tensor, pixels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, ObjectLayout]:
        """(B, P, Dv) features (and the (B, 3, s, s) pixels) -> ((B, T, D) image tokens, their
        :class:`ObjectLayout`)."""
        g = len(self.group_sizes)
        emb = self.word_embeddings
        offsets = self.group_offsets.tolist()
        background_rows = [offsets[i] + self.group_sizes[i] - 1 for i in range(g)]
        separator = emb.shape[0] - 1
        free = torch.tensor(background_rows + [separator], device=emb.device)
        rows = free.repeat(features.shape[0], self.max_objects, 1)  # (B, S, G + 1) rows of word_embeddings
        centers = torch.zeros((features.shape[0], self.max_objects, 2), device=emb.device)
        boxes = torch.zeros((features.shape[0], self.max_objects, 4), device=emb.device)
        present = torch.zeros((features.shape[0], self.max_objects), dtype=torch.bool, device=emb.device)
        for b, objects in enumerate(self.read_objects(features, pixels)):
            for s, obj in enumerate(objects):
                rows[b, s, :g] = torch.tensor([offsets[i] + w for i, w in enumerate(obj["words"])], device=emb.device)
                centers[b, s] = torch.tensor(obj["center"], device=emb.device)
                boxes[b, s] = torch.tensor(obj["box"], device=emb.device)
                present[b, s] = True
        tokens = emb[rows]  # (B, S, G + 1, D)
        if self.position_scale:
            code = position_code(centers.flatten(0, 1), emb.shape[1], self.position_scale).to(emb.dtype)
            code = code.view(*centers.shape[:2], 1, -1) * present[..., None, None].to(emb.dtype)
            tokens = tokens + code
        b, s, t, d = tokens.shape
        return tokens.reshape(b, s * t, d), ObjectLayout(boxes=boxes, present=present)
