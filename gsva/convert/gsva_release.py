"""Released GSVA / LISA weights (``gsva-7b-pt.bin``, ``gsva-7b-ft-gres.bin``, ``gsva-7b-ft-res.bin``) -> our format.

The release files are ``zero_to_fp32`` state dicts of the official ``LisaGSVAForCausalLM`` wrapped by peft 0.4
(LeapLabTHU/GSVA at 618dc79, README.md; loaded in ``main.py``, ``main``). With the ``base_model.model.`` prefix (present
whenever LoRA was used) stripped, a source key goes to our :class:`~gsva.modeling.gsva_model.GSVAModel` as follows:

=================================================================  ===========================================
release key                                                        ours
=================================================================  ===========================================
``model.layers.<i>.self_attn.{q,v}_proj.weight``                   ``mllm.model.language_model.layers.<i>.self_attn.{q,v}_proj.base_layer.weight``
``model.layers.<i>.self_attn.{q,v}_proj.lora_{A,B}.default.weight``  ``...{q,v}_proj.lora_{A,B}.default.weight``
other ``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``  ``mllm.model.language_model.*``
``lm_head.weight``                                                 ``mllm.lm_head.weight``
``model.vision_tower.vision_tower.vision_model.*``                 ``mllm.model.vision_tower.*``
``model.mm_projector.{weight,bias}``                               ``mllm.model.multi_modal_projector.*`` (one Linear)
``model.visual_model.*``                                           ``sam.*``
``model.text_hidden_fcs.0.{0,2}.*``                                ``seg_projector.layers.{0,2}.*``
=================================================================  ===========================================

Knowingly dropped: RoPE ``inv_freq`` buffers and CLIP's ``position_ids`` buffer (recomputed). Target keys the file
lacks (frozen parts a ``zero_to_fp32`` export may leave out) are taken from the LLaVA base and SAM checkpoint the
official training started from, and listed in the report. Anything else is an error naming the keys.

**Projector.** The official ``initialize_vision_modules`` replaces the LLaVA checkpoint's ``mm_projector`` with a
freshly initialised, frozen Linear before the weights are loaded (LeapLabTHU/GSVA at 618dc79,
``model/llava/model/llava_arch.py``, ``initialize_vision_modules``): GSVA was trained on that random projector, and only
the release file carries it. So the release's ``mm_projector`` is used, never the LLaVA base's; a release file without
it is an error (the official code would run with a new random projector there, which nothing can reproduce).

**Vocabulary.** The LLaVA tokenizer is extended in the official order ([SEG], [REJ], <im_start>, <im_end>, whichever
are missing; :data:`gsva.constants.CONTROL_TOKENS`), so ids match the release's embedding rows; our ``<image>``
placeholder comes last and gets zero embedding and output rows (its embedding is always replaced by image features,
and it is never a valid prediction: evaluation and generation exclude it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, check_state_dict, load_pickled_state_dict, save_model
from ..config import GSVAConfig, get_named_config

__all__ = ["map_release_key", "convert_gsva_release"]

logger = logging.getLogger(__name__)

_DROP = (re.compile(r"\.rotary_emb\.inv_freq$"), re.compile(r"vision_model\.embeddings\.position_ids$"))
_LORA_PROJ = re.compile(r"^model\.layers\.(\d+)\.self_attn\.([a-z_]+)\.(weight|lora_A\.default\.weight|"
                        r"lora_B\.default\.weight)$")


def map_release_key(key: str, lora_modules: tuple[str, ...]) -> str | None:
    """Our key for a release key (``base_model.model.`` already stripped); None when it is knowingly dropped.

    Raises KeyError for a key with no place in our model.
    """
    if any(p.search(key) for p in _DROP):
        return None
    m = _LORA_PROJ.match(key)
    if m and m.group(2) in lora_modules:
        layer, proj, param = m.groups()
        base = f"mllm.model.language_model.layers.{layer}.self_attn.{proj}"
        return f"{base}.base_layer.weight" if param == "weight" else f"{base}.{param}"
    if key == "lm_head.weight":
        return "mllm.lm_head.weight"
    for src, dst in (("model.vision_tower.vision_tower.vision_model.", "mllm.model.vision_tower."),
                     ("model.mm_projector.", "mllm.model.multi_modal_projector."),
                     ("model.visual_model.", "sam."),
                     ("model.text_hidden_fcs.0.", "seg_projector.layers.")):
        if key.startswith(src):
            return dst + key[len(src):]
    if key.startswith(("model.layers.", "model.embed_tokens.", "model.norm.")):
        return "mllm.model.language_model." + key[len("model."):]
    raise KeyError(key)


def convert_gsva_release(weights: str | Path, llava_dir: str | Path, sam_checkpoint: str | Path, out: str | Path,
                         config: GSVAConfig | str = "gsva-vicuna-7b", vision_tower: str | Path | None = None) -> dict:
    """Convert a release ``.bin`` (with the LLaVA base and SAM file it was trained from) into a GSVA checkpoint.

    ``llava_dir``: an HF-format LLaVA, a base converted by ``gsva convert llava``, or an original LLaVA-v1 folder
    (then ``vision_tower``, its HF CLIP folder, is required and the base is converted on the way).
    ``config``: the architecture — a name, a ``config.json`` path or a :class:`GSVAConfig`; its LoRA rank is replaced
    by the one found in the file.
    Returns the conversion report, also written to ``out/conversion.json``. Raises :class:`CheckpointError`.
    """
    import tempfile

    from ..pretrained import build_from_components
    from .llava import LLAVA_BASE_CONFIG, convert_llava_v1

    llava_dir = Path(llava_dir)
    config_path = llava_dir / "config.json"
    is_v1 = (not (llava_dir / LLAVA_BASE_CONFIG).is_file() and config_path.is_file()
             and "mm_vision_tower" in config_path.read_text())
    if is_v1:
        if vision_tower is None:
            raise CheckpointError(f"{llava_dir} is an original LLaVA-v1 checkpoint: give its CLIP folder "
                                  "(--vision-tower) to convert it on the way")
        with tempfile.TemporaryDirectory(prefix="gsva-llava-base-") as tmp:
            convert_llava_v1(llava_dir, vision_tower, tmp)
            return convert_gsva_release(weights, tmp, sam_checkpoint, out, config)
    weights, out = Path(weights), Path(out)
    if isinstance(config, str):
        config = GSVAConfig.load(config) if config.endswith(".json") else get_named_config(config)
    raw = load_pickled_state_dict(weights, "release weights")
    release = {k[len("base_model.model."):] if k.startswith("base_model.model.") else k: v for k, v in raw.items()}
    ranks = {int(v.shape[0]) for k, v in release.items() if k.endswith("lora_A.default.weight")}
    if len(ranks) > 1:
        raise CheckpointError(f"{weights}: LoRA layers of different ranks {sorted(ranks)}")
    rank = ranks.pop() if ranks else 0
    if "model.mm_projector.weight" not in release:
        raise CheckpointError(f"{weights} has no model.mm_projector: the official code re-initialises the projector "
                              "at random before loading the release file, so without it the trained model cannot be "
                              "reproduced")
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=rank))
    model, tokenizer = build_from_components(config, llava_dir, sam_checkpoint)
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, tensor in release.items():
        try:
            target = map_release_key(key, tuple(config.lora.target_modules) if rank else ())
        except KeyError:
            unknown.append(key)
            continue
        if target is None:
            dropped.append(key)
        else:
            mapped[target] = tensor
    extra = sorted(set(mapped) - set(ours))
    if unknown or extra:
        raise CheckpointError(f"{weights}: keys with no place in the model: {(unknown + extra)[:8]}"
                              + (f" (+{len(unknown) + len(extra) - 8} more)" if len(unknown) + len(extra) > 8 else ""))
    vocab_rows = {}
    for key in ("mllm.model.language_model.embed_tokens.weight", "mllm.lm_head.weight"):
        if key in mapped:
            rows = mapped[key].shape[0]
            if rows > ours[key].shape[0] or rows < model.token_ids.im_end + 1:
                raise CheckpointError(f"{weights}: {key} has {rows} rows but the extended tokenizer places "
                                      f"[SEG]/[REJ]/<im_start>/<im_end> at ids up to {model.token_ids.im_end} and has "
                                      f"{ours[key].shape[0]} entries: wrong LLaVA tokenizer?")
            if tuple(mapped[key].shape[1:]) != tuple(ours[key].shape[1:]):
                raise CheckpointError(f"{weights}: {key} has width {tuple(mapped[key].shape[1:])}, the config "
                                      f"{tuple(ours[key].shape[1:])}: weights of another model size (--config)?")
            full = torch.zeros_like(ours[key], dtype=mapped[key].dtype)
            full[:rows] = mapped[key]
            mapped[key] = full
            vocab_rows[key] = rows
    from_base = sorted(set(ours) - set(mapped))
    state = {k: mapped.get(k, ours[k]) for k in ours}
    check_state_dict(model, state, weights)
    model.load_state_dict(state, strict=True)
    save_model(model, tokenizer, out)
    report = {"source": str(weights), "lora_rank": rank, "mapped": len(mapped), "knowingly_dropped": dropped,
              "from_base": from_base, "release_vocab_rows": vocab_rows, "tokenizer_size": len(tokenizer),
              "token_ids": dataclasses.asdict(model.token_ids)}
    (out / "conversion.json").write_text(json.dumps(report, indent=1) + "\n")
    logger.info("mapped %d tensors, %d from the base, dropped %d", len(mapped), len(from_base), len(dropped))
    return report

