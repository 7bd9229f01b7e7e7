"""The light prompt generator of segment by example (:mod:`gsva.incontext`, method ``"trained"``).

In SEGIC's spirit (Meng et al. 2023: frozen backbones, a small trained part that turns correspondences into
prompts), it reads the correspondence maps of a target against the examples (:func:`gsva.incontext.
correspondence_maps`) together with the target's SAM ``image_embeddings`` modulated by the examples' mask-pooled
embedding, and predicts a coarse map of where the example's kind of object is; :func:`gsva.incontext.heatmap_prompts`
turns that map into clicks and boxes for SAM's frozen mask decoder.

Layers: the embeddings are upsampled bilinearly to the maps' grid; a 1 x 1 convolution reduces them to ``width``
channels, and the prototype goes through a linear layer to the same width; their product, the reduced embeddings and
the M maps are concatenated and pass three 3 x 3 convolutions of ``hidden`` channels with GELU and a last 3 x 3
convolution to one channel: logits (not probabilities).

Shape legend: B pairs, C SAM's prompt width, h x w the embedding grid, m x m the maps' grid, M map channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PromptGeneratorConfig", "ExamplePromptGenerator"]


@dataclass
class PromptGeneratorConfig:
    """Sizes of :class:`ExamplePromptGenerator` (saved as JSON with its weights). ``embed_dim``: C; ``maps``: M;
    ``width``: the reduced embedding width; ``hidden``: the convolutions' width; ``map_names``: the maps' channel
    names, checked against :data:`gsva.incontext.MAP_CHANNELS` at load."""

    embed_dim: int = 128
    maps: int = 8
    width: int = 48
    hidden: int = 64
    map_names: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["map_names"] = list(self.map_names)
        return out


class ExamplePromptGenerator(nn.Module):
    """(maps (B, M, m, m), image_embeddings (B, C, h, w), prototype (B, C)) -> (B, m, m) logits of where the
    examples' kind of object lies in the target (see the module docstring)."""

    def __init__(self, config: PromptGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        w, hid = config.width, config.hidden
        self.reduce = nn.Conv2d(config.embed_dim, w, 1)
        self.prototype = nn.Linear(config.embed_dim, w)
        layers, width = [], 2 * w + config.maps
        for _ in range(3):
            layers += [nn.Conv2d(width, hid, 3, padding=1), nn.GELU()]
            width = hid
        layers.append(nn.Conv2d(hid, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, maps: torch.Tensor, image_embeddings: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        if maps.shape[1] != self.config.maps or image_embeddings.shape[1] != self.config.embed_dim:
            raise ValueError(f"expected {self.config.maps} maps and {self.config.embed_dim}-channel embeddings, got "
                             f"{maps.shape[1]} and {image_embeddings.shape[1]}")
        emb = F.interpolate(image_embeddings.float(), maps.shape[-2:], mode="bilinear", align_corners=False)
        reduced = self.reduce(emb)
        modulated = reduced * self.prototype(prototype.float())[:, :, None, None]
        return self.body(torch.cat([modulated, reduced, maps.float()], dim=1))[:, 0]


GENERATOR_WEIGHTS = "incontext.safetensors"
GENERATOR_CONFIG = "incontext.json"
"""The prompt generator's files in a model directory: safetensors weights and a JSON config
(``{"generator": PromptGeneratorConfig fields, "training": ...}``)."""


def save_prompt_generator(generator: ExamplePromptGenerator, out_dir, training: dict | None = None) -> None:
    """Write ``generator`` into ``out_dir`` as :data:`GENERATOR_WEIGHTS` + :data:`GENERATOR_CONFIG` (``training``:
    what produced it, figures included, kept in the JSON)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()},
              str(out / GENERATOR_WEIGHTS), metadata={"format": "gsva-incontext-generator"})
    (out / GENERATOR_CONFIG).write_text(json.dumps({"generator": generator.config.to_dict(),
                                                    "training": training or {}}, indent=2) + "\n")


def load_prompt_generator(model_dir, model_config, device="cpu") -> ExamplePromptGenerator | None:
    """The prompt generator of ``model_dir``, or None when the directory has none (:data:`GENERATOR_WEIGHTS` absent).
    Loaded strictly: the config must name the channels of :data:`gsva.incontext.MAP_CHANNELS` and SAM's prompt
    width of ``model_config``, and the weights must be exactly the module's. Raises
    :class:`gsva.checkpoint.CheckpointError` for a config without weights (or the reverse), an unreadable or
    mismatched file."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from ..checkpoint import CheckpointError, check_state_dict
    from ..incontext import MAP_CHANNELS

    directory = Path(model_dir)
    weights, config = directory / GENERATOR_WEIGHTS, directory / GENERATOR_CONFIG
    if not weights.is_file() and not config.is_file():
        return None
    if not weights.is_file() or not config.is_file():
        raise CheckpointError(f"{directory}: {GENERATOR_WEIGHTS} and {GENERATOR_CONFIG} come together; one is missing")
    try:
        fields = json.loads(config.read_text())["generator"]
        cfg = PromptGeneratorConfig(**{**fields, "map_names": tuple(fields.get("map_names", ()))})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config}: not a prompt-generator config ({type(exc).__name__}: {exc})") from None
    if cfg.map_names != tuple(MAP_CHANNELS) or cfg.maps != len(MAP_CHANNELS):
        raise CheckpointError(f"{config}: trained on maps {list(cfg.map_names)}, but this version computes "
                              f"{list(MAP_CHANNELS)}")
    if cfg.embed_dim != model_config.sam.prompt_embed_dim:
        raise CheckpointError(f"{config}: made for {cfg.embed_dim}-channel SAM embeddings, the model has "
                              f"{model_config.sam.prompt_embed_dim}")
    generator = ExamplePromptGenerator(cfg)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise CheckpointError(f"{weights}: cannot read the prompt generator ({exc})") from None
    check_state_dict(generator, state, weights)
    generator.load_state_dict(state, strict=True)
    return generator.to(device).eval()
