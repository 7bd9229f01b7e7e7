"""Segment by example: example images with masks say what to segment in a new image (in-context segmentation, as in
SegGPT, Wang et al. 2023, and SEGIC, Meng et al. 2023, "SEGIC: Unleashing the Emergent Correspondence for In-Context
Segmentation").

As SEGIC does, the backbones stay frozen: dense correspondences between the examples' and the target's features
become prompts for SAM's mask decoder, which draws the masks. The features of an image (:class:`ImageFeatures`):

- SAM's ``image_embeddings`` (C x h x w): what the mask decoder reads; their cosine similarity to the examples'
  mask-pooled embedding is one correspondence map;
- the vision tower's per-patch word probabilities (colour and shape words of the object-word projector,
  :mod:`gsva.modeling.object_projector`), and the projector's objects with the words its crop reader reads: what
  the tower was trained to tell apart (colour and shape), so matching them is matching "things like this". The
  issue's choice between the SAM encoder and the tower: both, because on generated tasks the tower's words alone
  find the right objects far better than SAM's embeddings (one-shot mIoU 0.63 against 0.20, measured with
  ``benchmarks/incontext_probe.py``), while SAM's embeddings carry where the object's edges are;
- the image's mean colour per map cell.

Two methods turn them into prompts:

- ``"training_free"``: every target object whose words match the example objects' (P(same colour) x P(same shape),
  :func:`object_scores`) by at least :data:`KEEP_RATIO` of the best match (and more than :data:`MIN_SCORE`) is
  prompted with its patch box and its centre as a positive click;
- ``"trained"``: a light prompt generator (:class:`gsva.modeling.example_prompts.ExamplePromptGenerator`, trained
  on generated example/target pairs by :mod:`gsva.incontext_pretrain`) turns the correspondence maps
  (:func:`correspondence_maps`) and the mask-pooled example embedding into a coarse map of the target; each
  connected region of it becomes a positive click at its most confident cell and the region's box
  (:func:`heatmap_prompts`); SAM decodes each, and the crop reader reads each decoded part's colour and shape
  (:func:`verify_parts`): parts whose reading matches the examples' by at least :data:`VERIFY_RATIO` of the best
  part's are kept.

Each prompt decodes one mask (SAM's decoder, no [SEG]); the answer is their union. K examples average their
prototypes and match scores.

Frames: the *SAM frame* is SAM's padded square input (``sam.img_size`` pixels, the image resized so its longest side
fits, top-left); the maps live on an m x m grid of it (m = :data:`MAP_SCALE` x h). The tower's frame is the image
stretched to a square (``vision.preprocess = "resize"``, which the object-word projector requires). Objects' boxes
and centres are fractions of the image, (x, y) with the origin top-left; prompts handed to SAM are pixels of the
original image.

Shape legend: H x W an image, C SAM's prompt width, h x w the image-embedding grid, m x m the map grid (2h), K the
tower's colour and shape words (background left out), M correspondence-map channels (:data:`MAP_CHANNELS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import clip_preprocess, sam_postprocess, sam_preprocess
from .errors import InputError, UserError
from .refinement import RefineState, refine_low_res

__all__ = ["ImageFeatures", "Example", "Prompt", "SegmentLikeResult", "encode_features", "make_example",
           "object_scores", "training_free_prompts", "correspondence_maps", "heatmap_prompts", "decode_prompts",
           "read_region", "verify_parts", "segment_like", "follow_part", "MAP_SCALE", "MAP_CHANNELS", "KEEP_RATIO",
           "MIN_SCORE", "HEAT_THRESHOLD", "VERIFY_RATIO", "COLOUR_SIGMA", "METHODS"]

METHODS = ("training_free", "trained")
MAP_SCALE = 2
"""The correspondence maps' grid is this many times the image-embedding grid (40 x 40 for gsva-smol's 20 x 20)."""
KEEP_RATIO = 0.25
"""Training-free: a target object is kept when its match score is at least this share of the best one's."""
MIN_SCORE = 0.05
"""Both methods: a part scoring at most this is dropped."""
HEAT_THRESHOLD = 0.2
"""Trained: the generator's map proposes regions where its probability exceeds this (low, for recall: the
verification drops the wrong ones). Chosen on seed-100 tasks over 0.5 / 0.3 / 0.2 (one-shot mIoU 0.708 / 0.717 /
0.720 with the verification)."""
VERIFY_RATIO = 0.5
"""Trained: a proposed part is kept when its verification score (:func:`verify_parts`) is at least this share of
the best part's (0.25 / 0.5 / 0.7 measured, 0.5 best)."""
COLOUR_SIGMA = 0.1
"""Width of the colour-similarity map, exp(-|rgb - example rgb|^2 / (2 sigma^2)), RGB in [0, 1]."""
MAP_CHANNELS = ("sam_cosine", "patch_same_colour", "patch_same_shape", "object_same_colour", "object_same_shape",
                "object_match", "colour_similarity", "inside_image")
"""The channels of :func:`correspondence_maps`, in order."""


class NoWordTowerError(UserError, ValueError):
    """The model's projector does not read words (segment by example needs ``projector_type: object_words``)."""


@dataclass
class ImageFeatures:
    """What segment by example reads of one image (:func:`encode_features`).

    ``hw`` (H, W) the image's size in pixels; ``resized_hw`` (h', w') its SAM resize; ``image_embeddings`` (1, C, h, w)
    SAM's, in the model's dtype; ``words`` (K, p, p) float32 per-patch word probabilities in the tower's frame
    (colour words then shape words, each group renormalised without its background word); ``objects`` the
    projector's objects (``"probs"`` (K,) float32 colour then shape word probabilities from its crop reader,
    ``"box"`` (x0, y0, x1, y1) and ``"center"`` (x, y) image fractions); ``colours`` (3, m, m) float32 mean RGB in
    [0, 1] per map cell of the SAM frame (0 on the padding); ``tower_pixels`` (3, s, s) the tower's input (what the
    crop reader reads regions from, :func:`read_region`).
    """

    hw: tuple[int, int]
    resized_hw: tuple[int, int]
    image_embeddings: torch.Tensor
    words: torch.Tensor
    objects: list[dict]
    colours: torch.Tensor
    tower_pixels: torch.Tensor


@dataclass
class Example:
    """An example: its :class:`ImageFeatures`, its mask (H, W) bool and ``coverage`` (m, m) float32, the share of
    each SAM-frame map cell the mask covers."""

    features: ImageFeatures
    mask: np.ndarray
    coverage: torch.Tensor


@dataclass
class Prompt:
    """One SAM prompt: a positive click ``point`` (x, y) and a ``box`` (x0, y0, x1, y1), pixels of the original
    image; ``score`` in [0, 1], how well this region matches the examples."""

    point: tuple[float, float]
    box: tuple[float, float, float, float]
    score: float


@dataclass
class SegmentLikeResult:
    """What :meth:`gsva.inference.GSVAPredictor.segment_like` returns.

    ``mask`` (H, W) bool at the target's size; ``logits`` (H, W) float32 mask logits (> 0 is the mask; the maximum
    over the parts); ``score`` in [0, 1], the best part's match score (0: nothing found, empty mask); ``method``;
    ``prompts`` the :class:`Prompt` of each part; ``parts`` (H, W) bool per prompt.
    """

    mask: np.ndarray
    logits: np.ndarray
    score: float
    method: str
    prompts: list[Prompt] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)


# -- features ------------------------------------------------------------------------------------------------------
def _word_projector(model):
    from .modeling.object_projector import ObjectWordProjector

    projector = model.mllm.model.multi_modal_projector
    if not isinstance(projector, ObjectWordProjector) or len(projector.group_sizes) < 3:
        raise NoWordTowerError(f"segment by example needs a model whose projector reads colour and shape words "
                               f"(projector_type 'object_words', as gsva-smol); {model.config.name} has "
                               f"{type(projector).__name__}")
    return projector


def _colour_cells(image: np.ndarray, resized_hw: tuple[int, int], img_size: int, side: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, side, side) mean RGB in [0, 1] per cell of the SAM frame."""
    t = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0  # a copy: writable
    t = F.interpolate(t, resized_hw, mode="area")
    t = F.pad(t, (0, img_size - resized_hw[1], 0, img_size - resized_hw[0]))
    return F.adaptive_avg_pool2d(t, side)[0]


@torch.inference_mode()
def encode_features(model, image: np.ndarray) -> ImageFeatures:
    """The :class:`ImageFeatures` of one RGB image (H, W, 3) uint8, on the model's device. Raises
    :class:`NoWordTowerError` for a model without an object-word projector."""
    projector = _word_projector(model)
    cfg = model.config
    device, dtype = model.device, model.dtype
    sam_pixels, resized_hw = sam_preprocess(image, cfg.sam.img_size)
    clip = clip_preprocess(image, cfg.vision.image_size, cfg.vision.preprocess)[None].to(device, dtype)
    out = model.mllm.model.vision_tower(pixel_values=clip, output_hidden_states=True)
    patches = out.hidden_states[cfg.vision.feature_layer][:, 1:]
    # groups 1 and 2 are colour and shape for gsva-smol's ("size", "colour", "shape") groups
    words = torch.cat([lg.float().softmax(-1)[..., :-1] for lg in projector.word_logits(patches)[1:3]], -1)[0]
    side = int(round(words.shape[0] ** 0.5))
    objects = [{"probs": torch.cat([p.float() for p in o["probs"][1:3]]), "box": o["box"], "center": o["center"]}
               for o in projector.read_objects(patches, clip)[0]]
    embeddings = model.sam_image_embeddings(sam_pixels[None].to(device, dtype))
    m = MAP_SCALE * embeddings.shape[-1]
    return ImageFeatures(hw=tuple(image.shape[:2]), resized_hw=resized_hw, image_embeddings=embeddings,
                         words=words.T.reshape(-1, side, side).contiguous(), objects=objects,
                         colours=_colour_cells(image, resized_hw, cfg.sam.img_size, m).to(device),
                         tower_pixels=clip[0])


def mask_coverage(mask: np.ndarray, resized_hw: tuple[int, int], img_size: int, side: int) -> torch.Tensor:
    """(H, W) bool -> (side, side) float32: the share of each cell of the SAM frame (side x side grid) the mask
    covers."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    t = F.pad(F.interpolate(t, resized_hw, mode="area"), (0, img_size - resized_hw[1], 0, img_size - resized_hw[0]))
    return F.adaptive_avg_pool2d(t, side)[0, 0]


def make_example(features: ImageFeatures, mask, img_size: int) -> Example:
    """An :class:`Example` of ``features`` and its ``mask`` ((H, W) bool, the image's size). Raises InputError for
    a mask of another size or an empty one."""
    mask = np.asarray(mask)
    if mask.shape != features.hw:
        raise InputError(f"an example mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                         f"{features.hw[1]}x{features.hw[0]}")
    mask = mask.astype(bool)
    if not mask.any():
        raise InputError("an example mask is empty: it must mark the object to look for")
    side = features.colours.shape[-1]
    coverage = mask_coverage(mask, features.resized_hw, img_size, side).to(features.colours.device)
    return Example(features=features, mask=mask, coverage=coverage)


# -- frames --------------------------------------------------------------------------------------------------------
def _image_fraction_grid(resized_hw: tuple[int, int], img_size: int, side: int, device) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """For each cell centre of a side x side grid of the SAM frame: its (x, y) as image fractions, as a
    ``grid_sample`` grid (1, side, side, 2) in [-1, 1], and whether it lies inside the image (side, side) float32."""
    centres = (torch.arange(side, dtype=torch.float32, device=device) + 0.5) * img_size / side
    fx, fy = centres / resized_hw[1], centres / resized_hw[0]
    gy, gx = torch.meshgrid(fy, fx, indexing="ij")
    inside = ((gx < 1) & (gy < 1)).float()
    return torch.stack([gx * 2 - 1, gy * 2 - 1], -1)[None], inside


def _to_sam_frame(maps: torch.Tensor, resized_hw: tuple[int, int], img_size: int, side: int) -> torch.Tensor:
    """(n, a, b) maps over the image (any grid of image fractions) -> (n, side, side) over the SAM frame (0 on the
    padding)."""
    grid, inside = _image_fraction_grid(resized_hw, img_size, side, maps.device)
    out = F.grid_sample(maps[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return out * inside


def _coverage_in_image(example: Example, side: int, img_size: int) -> torch.Tensor:
    """An example's coverage resampled to a side x side grid of image fractions (the tower's frame)."""
    rh, rw = example.features.resized_hw
    f = (torch.arange(side, dtype=torch.float32, device=example.coverage.device) + 0.5) / side
    gy, gx = torch.meshgrid(f * rh / img_size, f * rw / img_size, indexing="ij")
    grid = torch.stack([gx * 2 - 1, gy * 2 - 1], -1)[None]
    return F.grid_sample(example.coverage[None, None], grid, mode="bilinear", align_corners=False)[0, 0]


# -- matching ------------------------------------------------------------------------------------------------------
def _same(a: torch.Tensor, b: torch.Tensor, colours: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P(same colour) and P(same shape) of word distributions ``a`` (K, ...) against ``b`` (K,), each normalised by
    ``b``'s self-match (so an identical, confident reading scores about 1)."""
    view = (-1,) + (1,) * (a.dim() - 1)
    pc = (a[:colours] * b[:colours].view(view)).sum(0) / b[:colours].pow(2).sum().clamp_min(1e-6)
    ps = (a[colours:] * b[colours:].view(view)).sum(0) / b[colours:].pow(2).sum().clamp_min(1e-6)
    return pc, ps


def _box_cover(box, coverage: torch.Tensor) -> float:
    """Share of a coverage map (side x side, image fractions) inside ``box`` (image fractions)."""
    side = coverage.shape[-1]
    x0, y0, x1, y1 = box
    inside = coverage[int(y0 * side):int(np.ceil(y1 * side)), int(x0 * side):int(np.ceil(x1 * side))].sum()
    return float(inside / coverage.sum().clamp_min(1e-6))


def example_objects(examples: Sequence[Example], img_size: int) -> list[torch.Tensor]:
    """Per example (that has objects), the word probabilities (K,) of its object: the projector object whose patch
    box holds most of the example mask."""
    out = []
    for ex in examples:
        if ex.features.objects:
            cover = _coverage_in_image(ex, 32, img_size)
            out.append(max(ex.features.objects, key=lambda o: _box_cover(o["box"], cover))["probs"])
    return out


def object_scores(examples: Sequence[Example], target: ImageFeatures, colours: int, img_size: int
                  ) -> list[tuple[float, float]]:
    """Per target object, (P(same colour), P(same shape)) against the examples' objects (mean over examples; 0 when
    no example has an object)."""
    chosen = example_objects(examples, img_size)
    out = []
    for obj in target.objects:
        if not chosen:
            out.append((0.0, 0.0))
            continue
        pairs = [_same(obj["probs"], c, colours) for c in chosen]
        out.append((float(np.mean([float(p[0]) for p in pairs])), float(np.mean([float(p[1]) for p in pairs]))))
    return out


def training_free_prompts(examples: Sequence[Example], target: ImageFeatures, colours: int, img_size: int
                          ) -> list[Prompt]:
    """The training-free method's prompts (module docstring): one per kept target object, its centre as a
    positive click and its patch box, in pixels of the target."""
    scores = [c * s for c, s in object_scores(examples, target, colours, img_size)]
    best = max(scores, default=0.0)
    h, w = target.hw
    prompts = []
    for obj, score in zip(target.objects, scores):
        if score > MIN_SCORE and score >= KEEP_RATIO * best:
            x0, y0, x1, y1 = obj["box"]
            prompts.append(Prompt(point=(obj["center"][0] * w, obj["center"][1] * h),
                                  box=(x0 * w, y0 * h, x1 * w, y1 * h), score=min(1.0, score)))
    return prompts


def prototype(examples: Sequence[Example]) -> torch.Tensor:
    """(C,) float32: the examples' mask-pooled SAM ``image_embeddings``, averaged over examples."""
    protos = []
    for ex in examples:
        emb = ex.features.image_embeddings[0].float()
        weight = F.adaptive_avg_pool2d(ex.coverage[None, None], emb.shape[-1])[0, 0]
        protos.append((emb * weight).sum((1, 2)) / weight.sum().clamp_min(1e-6))
    return torch.stack(protos).mean(0)


def correspondence_maps(examples: Sequence[Example], target: ImageFeatures, colours: int, img_size: int
                        ) -> torch.Tensor:
    """(M, m, m) float32 maps of the target's SAM frame, channels :data:`MAP_CHANNELS`:

    0. cosine similarity of the target's SAM embeddings (upsampled bilinearly to m x m) to :func:`prototype`;
    1-2. P(same colour), P(same shape) of each patch's words against the examples' mask-pooled patch words;
    3-5. the target objects' (P(same colour), P(same shape), their product) against the examples' objects, painted
       on each object's patch box (maximum where boxes overlap);
    6. colour similarity of each cell's mean RGB to the examples' mean RGB under their masks
       (:data:`COLOUR_SIGMA`);
    7. 1 inside the image, 0 on the padding.

    Match maps average over examples."""
    m = target.colours.shape[-1]
    device = target.colours.device
    emb = F.interpolate(target.image_embeddings.float(), (m, m), mode="bilinear", align_corners=False)[0]
    cosine = F.cosine_similarity(emb, prototype(examples).to(device)[:, None, None], dim=0)
    patch_side = target.words.shape[-1]
    pcs, pss, rgbs = [], [], []
    for ex in examples:
        cover = _coverage_in_image(ex, patch_side * 4, img_size)
        cover = F.adaptive_avg_pool2d(cover[None, None], patch_side)[0, 0]
        pooled = (ex.features.words * cover).sum((1, 2)) / cover.sum().clamp_min(1e-6)
        pc, ps = _same(target.words, pooled, colours)
        pcs.append(pc)
        pss.append(ps)
        rgbs.append((ex.features.colours * ex.coverage).sum((1, 2)) / ex.coverage.sum().clamp_min(1e-6))
    patch = _to_sam_frame(torch.stack([torch.stack(pcs).mean(0), torch.stack(pss).mean(0)]), target.resized_hw,
                          img_size, m)
    grid = 32
    painted = torch.zeros((3, grid, grid), device=device)
    for obj, (pc, ps) in zip(target.objects, object_scores(examples, target, colours, img_size)):
        x0, y0, x1, y1 = obj["box"]
        rows = slice(int(round(y0 * grid)), max(int(round(y1 * grid)), int(round(y0 * grid)) + 1))
        cols = slice(int(round(x0 * grid)), max(int(round(x1 * grid)), int(round(x0 * grid)) + 1))
        for ch, value in enumerate((pc, ps, pc * ps)):
            painted[ch, rows, cols] = painted[ch, rows, cols].clamp_min(value)
    objects = _to_sam_frame(painted, target.resized_hw, img_size, m)
    _, inside = _image_fraction_grid(target.resized_hw, img_size, m, device)
    rgb = torch.stack(rgbs).mean(0)
    colour = torch.exp(-(target.colours - rgb[:, None, None]).pow(2).sum(0) / (2 * COLOUR_SIGMA ** 2)) * inside
    return torch.cat([cosine[None] * inside, patch, objects, colour[None], inside[None]])


def heatmap_prompts(heat: torch.Tensor, target: ImageFeatures, img_size: int, threshold: float = 0.5,
                    min_cells: int = 3) -> list[Prompt]:
    """Prompts from the prompt generator's map: ``heat`` (n, n) logits over the SAM frame (any grid). Each
    4-connected region of cells with probability > ``threshold`` and at least ``min_cells`` cells (inside the
    image) gives a positive click at its most probable cell's centre and its cells' box, scored by that
    probability; no region: one prompt at the most probable cell (score its probability)."""
    n = heat.shape[-1]
    prob = heat.float().sigmoid().cpu().numpy()
    rh, rw = target.resized_hw
    inside = np.zeros((n, n), bool)
    inside[:int(np.ceil(rh * n / img_size)), :int(np.ceil(rw * n / img_size))] = True
    count, labels = cv2.connectedComponents(((prob > threshold) & inside).astype(np.uint8), connectivity=4)
    regions = [labels == k for k in range(1, count) if (labels == k).sum() >= min_cells]
    if not regions:
        regions = [np.arange(n * n).reshape(n, n) == int(np.argmax(np.where(inside, prob, -1.0)))]
    h, w = target.hw
    cell = img_size / n
    sx, sy = w / rw, h / rh
    prompts = []
    for region in regions:
        k = int(np.argmax(np.where(region, prob, -1.0)))
        y, x = divmod(k, n)
        ys, xs = np.nonzero(region)
        box = (xs.min() * cell * sx, ys.min() * cell * sy, min((xs.max() + 1) * cell * sx, w),
               min((ys.max() + 1) * cell * sy, h))
        prompts.append(Prompt(point=((x + 0.5) * cell * sx, (y + 0.5) * cell * sy), box=box,
                              score=float(prob[y, x])))
    return prompts


@torch.inference_mode()
def decode_prompts(sam, target: ImageFeatures, prompts: Sequence[Prompt], img_size: int, use_box: bool = True
                   ) -> np.ndarray:
    """SAM's mask decoder on each prompt (a positive click, and its box when ``use_box``; no [SEG], no dense
    prompt). Returns (n, H, W) float32 mask logits at the target's size, one per prompt ((0, H, W) for none)."""
    h, w = target.hw
    if not prompts:
        return np.zeros((0, h, w), np.float32)
    lows = [refine_low_res(sam, target.image_embeddings, RefineState(prompt=None, low_res=None, points=(p.point,),
                                                                     labels=(1,), box=p.box if use_box else None),
                           (h, w), target.resized_hw) for p in prompts]
    return sam_postprocess(torch.stack(lows), img_size, target.resized_hw, (h, w)).cpu().numpy().astype(np.float32)


@torch.inference_mode()
def read_region(model, pixels: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """The crop reader's colour and shape word probabilities (K,) float32 of the region ``mask`` ((H, W) bool, not
    empty) of an image whose tower input is ``pixels`` (3, s, s): the crop around the patches of the mask's
    bounding box (the tower's frame), as the projector reads its own objects (:func:`gsva.modeling.
    object_projector.object_crops`)."""
    from .modeling.object_projector import object_crops

    projector = _word_projector(model)
    side = projector.side
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    c0, c1 = int(xs.min() * side / w), int(np.ceil((xs.max() + 1) * side / w))
    r0, r1 = int(ys.min() * side / h), int(np.ceil((ys.max() + 1) * side / h))
    members = [r * side + c for r in range(r0, max(r1, r0 + 1)) for c in range(c0, max(c1, c0 + 1))]
    crops, extents = object_crops(pixels, [members], side)
    logits = projector.crop_reader(crops, extents.to(crops.device))
    return torch.cat([g[0, :-1].float().softmax(-1) for g in logits[1:3]])


def verify_parts(model, examples: Sequence[Example], target: ImageFeatures, parts: Sequence[np.ndarray]
                 ) -> list[float]:
    """Per part ((H, W) bool), P(same colour) x P(same shape) of its :func:`read_region` reading against each
    example mask's own reading, averaged over examples (0 for an empty part)."""
    colours = _word_projector(model).group_sizes[1] - 1
    readings = [read_region(model, ex.features.tower_pixels, ex.mask) for ex in examples]
    scores = []
    for part in parts:
        if not part.any():
            scores.append(0.0)
            continue
        probs = read_region(model, target.tower_pixels, part)
        scores.append(float(np.mean([float(c * s) for c, s in (_same(probs, r, colours) for r in readings)])))
    return scores

def segment_like(model, examples: Sequence[Example], target: ImageFeatures, method: str = "training_free",
                 generator=None) -> SegmentLikeResult:
    """Segment in ``target`` what the ``examples`` mark, with ``method`` (:data:`METHODS`; "trained" needs the
    :class:`gsva.modeling.example_prompts.ExamplePromptGenerator` ``generator``). Raises InputError for no
    example, ValueError for an unknown method or a missing generator."""
    if not examples:
        raise InputError("segment by example needs at least one (image, mask) example")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    projector = _word_projector(model)
    colours = projector.group_sizes[1] - 1
    img_size = model.config.sam.img_size
    if method == "trained":
        if generator is None:
            raise ValueError("the trained method needs a prompt generator (none is loaded)")
        with torch.inference_mode():
            maps = correspondence_maps(examples, target, colours, img_size)
            heat = generator(maps[None], target.image_embeddings, prototype(examples)[None])[0]  # (m, m)
        prompts = heatmap_prompts(heat, target, img_size, threshold=HEAT_THRESHOLD)
        part_logits = decode_prompts(model.sam, target, prompts, img_size)
        scores = verify_parts(model, examples, target, [lg > 0 for lg in part_logits])
        best = max(scores, default=0.0)
        kept = [k for k, v in enumerate(scores) if v > MIN_SCORE and v >= VERIFY_RATIO * best]
        prompts = [replace(prompts[k], score=min(1.0, scores[k])) for k in kept]
        part_logits = part_logits[kept]
    else:
        prompts = training_free_prompts(examples, target, colours, img_size)
        part_logits = decode_prompts(model.sam, target, prompts, img_size)
    h, w = target.hw
    logits = part_logits.max(0) if len(part_logits) else np.full((h, w), -1e4, np.float32)
    return SegmentLikeResult(mask=logits > 0, logits=logits, score=max((p.score for p in prompts), default=0.0),
                             method=method, prompts=list(prompts), parts=[lg > 0 for lg in part_logits])

def follow_part(result: SegmentLikeResult, previous: np.ndarray) -> SegmentLikeResult:
    """Keep one object of a :func:`segment_like` result for following it through frames: the part that overlaps
    ``previous`` ((H, W) bool, the last frame's mask) by the highest IoU; when none overlaps it, the part with the
    best score. The logits outside the kept part are lowered to at most -1 so that ``logits > 0`` is the part."""
    if len(result.parts) <= 1:
        return result

    def overlap(part: np.ndarray) -> float:
        union = np.logical_or(part, previous).sum()
        return float(np.logical_and(part, previous).sum() / union) if union else 0.0

    ious = [overlap(p) for p in result.parts]
    k = int(np.argmax(ious)) if max(ious) > 0 else int(np.argmax([p.score for p in result.prompts]))
    part = result.parts[k]
    logits = np.where(part, result.logits, np.minimum(result.logits, -1.0)).astype(np.float32)
    return SegmentLikeResult(mask=part.copy(), logits=logits, score=result.prompts[k].score, method=result.method,
                             prompts=[result.prompts[k]], parts=[part])
