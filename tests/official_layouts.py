"""Checkpoints written in the official on-disk layouts, at micro scale, with random weights.

* :func:`write_llava_v1`: a haotian-liu LLaVA-v1 folder (``LlavaLlamaForCausalLM`` keys, sharded ``pytorch_model``
  ``.bin`` + index, ``mm_*`` config fields, LLaMA tokenizer) and an HF CLIP folder (``CLIPModel``).
* :func:`official_release_state`: a GSVA release state dict (peft-0.4-wrapped ``LisaGSVAForCausalLM`` keys, as
  LeapLabTHU/GSVA at 618dc79, ``main.py``, ``main`` loads them), built from the official module structure: transformers'
  LLaMA/CLIP and segment-anything's ``Sam`` with their own key names, LoRA A/B per q/v projection,
  ``text_hidden_fcs.0.{0,2}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_llava_v1(root: Path, tokenizer, cfg) -> dict:
    """Write ``root/llava-v1`` and ``root/clip``. Returns the source modules and projector tensors."""
    from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

    text = LlamaConfig(hidden_size=cfg.text.hidden_size, intermediate_size=cfg.text.intermediate_size,
                       num_hidden_layers=cfg.text.num_hidden_layers, num_attention_heads=cfg.text.num_attention_heads,
                       vocab_size=len(tokenizer), max_position_embeddings=512, rms_norm_eps=1e-6)
    llama = LlamaForCausalLM(text).eval()
    state = dict(llama.state_dict())
    w, b = torch.randn(cfg.text.hidden_size, cfg.vision.hidden_size) * 0.1, torch.randn(cfg.text.hidden_size) * 0.1
    state["model.mm_projector.weight"], state["model.mm_projector.bias"] = w, b
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # saved by transformers 4.2x
    src = root / "llava-v1"
    src.mkdir(parents=True)
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:]), 1):  # sharded .bin, as the released checkpoints
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, src / name)
        weight_map.update({k: name for k in part})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = text.to_dict()
    config.update({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
                   "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_hidden_size": cfg.vision.hidden_size,
                   "mm_vision_select_layer": -2, "mm_use_im_start_end": True})
    (src / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(src))
    clip = CLIPModel(CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1},
        vision_config=clip_vision_config(cfg), projection_dim=16)).eval()
    clip.save_pretrained(str(root / "clip"))
    return {"src": src, "clip_dir": root / "clip", "llama": llama, "clip": clip, "proj_w": w, "proj_b": b}


def clip_vision_config(cfg) -> dict:
    return {"hidden_size": cfg.vision.hidden_size, "intermediate_size": cfg.vision.intermediate_size,
            "num_hidden_layers": cfg.vision.num_hidden_layers, "num_attention_heads": cfg.vision.num_attention_heads,
            "image_size": cfg.vision.image_size, "patch_size": cfg.vision.patch_size}


def official_release_state(cfg, sam_cfg, vocab: int, rank: int, omit_prefixes: tuple[str, ...] = ()) -> dict:
    """A random release state dict with ``base_model.model.`` keys; keys starting (after the prefix) with one of
    ``omit_prefixes`` are left out, as a ``zero_to_fp32`` export may leave out frozen parts."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from gsva.modeling.sam import build_sam

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=cfg.text.hidden_size, intermediate_size=cfg.text.intermediate_size,
                                         num_hidden_layers=cfg.text.num_hidden_layers,
                                         num_attention_heads=cfg.text.num_attention_heads, vocab_size=vocab,
                                         max_position_embeddings=512, rms_norm_eps=1e-6))
    state = {}
    for k, v in llama.state_dict().items():
        state[k] = v.clone()
        if k.endswith(("self_attn.q_proj.weight", "self_attn.v_proj.weight")):
            stem = k[: -len(".weight")]
            state[f"{stem}.lora_A.default.weight"] = torch.randn(rank, v.shape[1]) * 0.2
            state[f"{stem}.lora_B.default.weight"] = torch.randn(v.shape[0], rank) * 0.2
    vision = CLIPVisionModel(CLIPVisionConfig(**clip_vision_config(cfg)))
    # transformers 4.x (the official code's) CLIPVisionModel held the transformer as `vision_model`
    state.update({f"model.vision_tower.vision_tower.vision_model.{k.removeprefix('vision_model.')}": v.clone()
                  for k, v in vision.state_dict().items()})
    state["model.mm_projector.weight"] = torch.randn(cfg.text.hidden_size, cfg.vision.hidden_size) * 0.1
    state["model.mm_projector.bias"] = torch.randn(cfg.text.hidden_size) * 0.1
    state.update({f"model.visual_model.{k}": v.clone() for k, v in build_sam(sam_cfg).state_dict().items()})
    h, c = cfg.text.hidden_size, sam_cfg.prompt_embed_dim
    state.update({"model.text_hidden_fcs.0.0.weight": torch.randn(h, h) * 0.1, "model.text_hidden_fcs.0.0.bias":
                  torch.randn(h) * 0.1, "model.text_hidden_fcs.0.2.weight": torch.randn(c, h) * 3.0,
                  "model.text_hidden_fcs.0.2.bias": torch.randn(c) * 0.1})
    return {f"base_model.model.{k}": v for k, v in state.items() if not k.startswith(omit_prefixes)}
