"""Original LLaVA-v1 checkpoints (haotian-liu ``LlavaLlamaForCausalLM``) -> a LLaVA base in our format.

Source layout (LLaVA-Lightning-7B-v1-1, LLaVA-13b-v1-1, llava-llama-2-13b-chat-lightning-preview, the bases named in
LeapLabTHU/GSVA at 618dc79, README.md): ``config.json`` with the LLaMA fields plus ``mm_vision_tower`` (a CLIP name or
path), ``mm_hidden_size``, ``mm_vision_select_layer`` (-2), ``mm_use_im_start_end`` and optionally ``mm_projector_type``
(absent in v1 = "linear"); weights as ``pytorch_model*.bin`` (read with ``torch.load(weights_only=True)``) or
``*.safetensors``, single or sharded with an index; a LLaMA tokenizer. The CLIP tower is not in these checkpoints:
``--vision-tower`` is an HF CLIP directory (``openai/clip-vit-large-patch14``: a ``CLIPModel`` or ``CLIPVisionModel``).

Output directory (read by :func:`gsva.pretrained.build_from_components`)::

    gsva_llava.json     {"vision": VisionConfig, "text": TextConfig, "use_im_start_end": bool, "source": ...}
    model.safetensors   the state dict of :func:`gsva.modeling.mllm.build_llava` (transformers' Llava module
                        names, the v1 projector as one ``nn.Linear``)
    tokenizer files     the source tokenizer, unchanged

Key map: every source key is used or listed as knowingly dropped (RoPE ``inv_freq`` buffers of old transformers,
CLIP's text half, vision-tower copies inside the LLaVA file); every target key is filled; anything else is an error
naming the keys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import CheckpointError, load_pickled_state_dict
from ..config import TextConfig, VisionConfig
from ..legacy_tokenization import SENTENCEPIECE_FILE

__all__ = ["LLAVA_BASE_CONFIG", "read_weights", "convert_llava_v1", "load_llava_base", "llava_v1_key_map"]

logger = logging.getLogger(__name__)

LLAVA_BASE_CONFIG = "gsva_llava.json"

_DROP_LLAVA = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
               re.compile(r"model\.vision_tower\."))
_DROP_CLIP = (re.compile(r"(text_model|text_projection|visual_projection|logit_scale)"),
              re.compile(r"vision_model\.embeddings\.position_ids$"))


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers-style weights folder: ``model.safetensors`` / ``pytorch_model.bin``, or their
    sharded forms with ``*.index.json``. ``.bin`` files go through ``torch.load(weights_only=True)``.
    Raises :class:`CheckpointError` naming the file."""
    def load(path: Path) -> dict[str, torch.Tensor]:
        if path.suffix != ".safetensors":
            return load_pickled_state_dict(path)
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None

    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return load(folder / single)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                files = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{folder / index}: not a valid shard index ({exc})") from None
            state: dict[str, torch.Tensor] = {}
            for name in files:
                if not (folder / name).is_file():
                    raise CheckpointError(f"{folder / name} is missing (named by {index})")
                state.update(load(folder / name))
            return state
    raise CheckpointError(f"{folder}: no weights (model.safetensors, pytorch_model.bin or a sharded index)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from None


def _config_errors() -> tuple[type[Exception], ...]:
    """What transformers' config classes raise for bad values (validated dataclasses in transformers 5)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub
        return (TypeError, ValueError)
    return (TypeError, ValueError, StrictDataclassError)


_CONFIG_ERRORS = _config_errors()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _vision_config(clip_cfg: dict, clip_path: Path):
    """transformers' ``CLIPVisionConfig`` of a CLIP folder's ``config.json`` (a ``CLIPModel`` file nests it under
    ``vision_config``, a ``CLIPVisionModel`` file is it). Older transformers wrote only the values that differ from
    the defaults (e.g. no ``image_size`` for 224), so the file is read through the config class, which fills them
    in exactly as transformers itself loads that file. Raises :class:`CheckpointError` naming ``clip_path``."""
    from transformers import CLIPVisionConfig

    vision = clip_cfg.get("vision_config", clip_cfg)
    if not isinstance(vision, dict):
        raise CheckpointError(f"{clip_path}: vision_config is not a mapping")
    vision = {k: v for k, v in vision.items() if k not in ("model_type", "transformers_version", "architectures")}
    try:
        return CLIPVisionConfig(**vision)
    except _CONFIG_ERRORS as exc:
        raise CheckpointError(f"{clip_path}: not a CLIP vision config ({_one_line(exc)})") from None


def _text_config(src_cfg: dict, src_path: Path):
    """transformers' ``LlamaConfig`` of a LLaVA-v1 ``config.json`` (its LLaMA fields; defaults filled in as
    transformers fills them). Raises :class:`CheckpointError` naming ``src_path``."""
    from transformers import LlamaConfig

    fields = {k: v for k, v in src_cfg.items() if not k.startswith("mm_") and k not in
              ("model_type", "transformers_version", "architectures", "auto_map")}
    try:
        return LlamaConfig(**fields)
    except _CONFIG_ERRORS as exc:
        raise CheckpointError(f"{src_path}: not a LLaMA config ({_one_line(exc)})") from None


def _configs(src_cfg: dict, clip_cfg: dict, src_path: Path, clip_path: Path) -> tuple[VisionConfig, TextConfig, bool]:
    """Our vision/text configs from a LLaVA-v1 ``config.json`` (``src_path``) and its CLIP ``config.json``
    (``clip_path``); errors name the file at fault."""
    projector = src_cfg.get("mm_projector_type", "linear")
    if projector not in ("linear", "mlp2x_gelu"):
        raise CheckpointError(f"{src_path}: mm_projector_type {projector!r} is not supported (linear, mlp2x_gelu)")
    clip, llama = _vision_config(clip_cfg, clip_path), _text_config(src_cfg, src_path)
    try:
        v = VisionConfig(hidden_size=int(clip.hidden_size), intermediate_size=int(clip.intermediate_size),
                         num_hidden_layers=int(clip.num_hidden_layers),
                         num_attention_heads=int(clip.num_attention_heads),
                         image_size=int(clip.image_size), patch_size=int(clip.patch_size),
                         feature_layer=int(src_cfg.get("mm_vision_select_layer", -2)), projector_type=projector,
                         preprocess="center_crop")
        v.validate()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{clip_path}: {exc}") from None
    try:
        t = TextConfig(hidden_size=int(llama.hidden_size), intermediate_size=int(llama.intermediate_size),
                       num_hidden_layers=int(llama.num_hidden_layers),
                       num_attention_heads=int(llama.num_attention_heads),
                       num_key_value_heads=int(llama.num_key_value_heads or llama.num_attention_heads),
                       vocab_size=int(llama.vocab_size), max_position_embeddings=int(llama.max_position_embeddings),
                       rms_norm_eps=float(llama.rms_norm_eps), rope_theta=float(_rope_theta(llama)))
        t.validate()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{src_path}: {exc}") from None
    if "mm_hidden_size" in src_cfg and int(src_cfg["mm_hidden_size"]) != v.hidden_size:
        raise CheckpointError(f"{src_path}: mm_hidden_size {src_cfg['mm_hidden_size']} differs from the vision "
                              f"tower's width {v.hidden_size} ({clip_path}): wrong --vision-tower?")
    return v, t, bool(src_cfg.get("mm_use_im_start_end", True))


def _rope_theta(llama) -> float:
    """RoPE base of a ``LlamaConfig``: transformers 5 keeps it in ``rope_parameters``, older ones in ``rope_theta``."""
    params = getattr(llama, "rope_parameters", None) or {}
    return params.get("rope_theta", getattr(llama, "rope_theta", 10000.0))


def llava_v1_key_map(llava_keys, clip_keys, projector: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{target key: ("llava" | "clip", source key)} and the knowingly dropped source keys (prefixed by origin).

    Raises :class:`CheckpointError` for a source key that is neither mapped nor knowingly dropped.
    """
    mapping: dict[str, tuple[str, str]] = {}
    dropped, unknown = [], []
    for k in llava_keys:
        if any(p.search(k) for p in _DROP_LLAVA):
            dropped.append(f"llava:{k}")
        elif k.startswith("model.mm_projector."):
            rest = k[len("model.mm_projector."):]
            if projector == "mlp2x_gelu":
                layer, _, param = rest.partition(".")
                rest = {"0": "linear_1", "2": "linear_2"}.get(layer, "?") + "." + param
            mapping[f"model.multi_modal_projector.{rest}"] = ("llava", k)
        elif k.startswith("model."):
            mapping[f"model.language_model.{k[len('model.'):]}"] = ("llava", k)
        elif k == "lm_head.weight":
            mapping[k] = ("llava", k)
        else:
            unknown.append(f"llava:{k}")
    for k in clip_keys:
        if any(p.search(k) for p in _DROP_CLIP):
            dropped.append(f"clip:{k}")
        elif k.startswith("vision_model."):  # transformers 5 Llava holds the CLIP vision transformer itself
            mapping[f"model.vision_tower.{k[len('vision_model.'):]}"] = ("clip", k)
        else:
            unknown.append(f"clip:{k}")
    if unknown:
        raise CheckpointError(f"source keys with no place in the LLaVA base: {unknown[:8]}"
                              + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    return mapping, dropped


def convert_llava_v1(src: str | Path, vision_tower: str | Path, out: str | Path) -> dict:
    """Convert a LLaVA-v1 checkpoint folder plus an HF CLIP folder into a LLaVA base (module docstring).

    Returns a summary (configs, counts, dropped keys). Raises :class:`CheckpointError` naming files and keys.
    """
    from transformers import AutoTokenizer

    from ..config import GSVAConfig
    from ..modeling.mllm import build_llava

    src, vision_tower, out = Path(src), Path(vision_tower), Path(out)
    src_cfg, clip_cfg = _read_json(src / "config.json"), _read_json(vision_tower / "config.json")
    vision, text, im_start_end = _configs(src_cfg, clip_cfg, src / "config.json", vision_tower / "config.json")
    llava_state, clip_state = read_weights(src), read_weights(vision_tower)
    mapping, dropped = llava_v1_key_map(llava_state, clip_state, vision.projector_type)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{src}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    cfg = GSVAConfig(vision=vision, text=text)
    target = build_llava(cfg, text.vocab_size, image_token_id=0, pad_token_id=0).state_dict()
    missing = sorted(set(target) - set(mapping))
    extra = sorted(set(mapping) - set(target))
    shapes = [f"{k}: {tuple(llava_state[s].shape if o == 'llava' else clip_state[s].shape)} != {tuple(target[k].shape)}"
              for k, (o, s) in mapping.items() if k in target
              and tuple((llava_state if o == "llava" else clip_state)[s].shape) != tuple(target[k].shape)]
    if missing or extra or shapes:
        raise CheckpointError(f"{src} + {vision_tower} do not fill the LLaVA base: missing {missing[:8]}, "
                              f"unexpected {extra[:8]}, wrong shape {shapes[:8]}")
    state = {k: (llava_state if o == "llava" else clip_state)[s].contiguous() for k, (o, s) in mapping.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    meta = {"vision": dataclasses.asdict(vision), "text": dataclasses.asdict(text), "use_im_start_end": im_start_end,
            "source": {"llava": str(src), "vision_tower": str(vision_tower),
                       "mm_vision_tower": src_cfg.get("mm_vision_tower")},
            "dropped_keys": dropped}
    (out / LLAVA_BASE_CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
    tokenizer.save_pretrained(str(out))
    if (src / SENTENCEPIECE_FILE).is_file():  # the exact file, for text.tokenization: legacy_sentencepiece
        shutil.copyfile(src / SENTENCEPIECE_FILE, out / SENTENCEPIECE_FILE)
    logger.info("converted %d tensors, dropped %d", len(state), len(dropped))
    return {"tensors": len(state), "dropped": dropped, "vision": vision, "text": text}


def load_llava_base(folder: str | Path, dtype: torch.dtype = torch.float32):
    """(LlavaForConditionalGeneration, VisionConfig, TextConfig, use_im_start_end) of a converted LLaVA base, loaded
    strictly. Raises :class:`CheckpointError`."""
    from ..checkpoint import check_state_dict
    from ..config import GSVAConfig
    from ..modeling.mllm import build_llava

    folder = Path(folder)
    meta = _read_json(folder / LLAVA_BASE_CONFIG)
    try:
        vision, text = VisionConfig(**meta["vision"]), TextConfig(**meta["text"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / LLAVA_BASE_CONFIG}: malformed ({exc})") from None
    model = build_llava(GSVAConfig(vision=vision, text=text), text.vocab_size, image_token_id=0, pad_token_id=0)
    try:
        state = load_file(str(folder / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{folder / 'model.safetensors'}: cannot read ({exc})") from None
    check_state_dict(model, state, folder / "model.safetensors")
    model.load_state_dict(state, strict=True)
    return model.to(dtype), vision, text, bool(meta.get("use_im_start_end", True))
