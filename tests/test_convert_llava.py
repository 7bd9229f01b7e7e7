"""gsva convert llava: an original LLaVA-v1 checkpoint (written here in its exact layout) + an HF CLIP folder."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gsva.checkpoint import CheckpointError
from gsva.cli import main as gsva_main
from gsva.convert.llava import convert_llava_v1
from gsva.pretrained import build_from_components

from .conftest import micro_config
from .official_layouts import write_llava_v1


def _config():
    cfg = micro_config()
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, feature_layer=-2, projector_type="linear",
                                                               preprocess="center_crop"))


@pytest.fixture()
def llava_v1(tokenizer, tmp_path):
    """(src folder, CLIP folder, source LLaMA, source CLIP, projector weight, projector bias)."""
    torch.manual_seed(0)
    parts = write_llava_v1(tmp_path, tokenizer, _config())
    return parts["src"], parts["clip_dir"], parts["llama"], parts["clip"], parts["proj_w"], parts["proj_b"]


def test_converted_llava_reproduces_the_source_parts(llava_v1, micro_model, tmp_path):
    src, clip_dir, llama, clip, w, b = llava_v1
    summary = convert_llava_v1(src, clip_dir, tmp_path / "base")
    assert "llava:model.layers.0.self_attn.rotary_emb.inv_freq" in summary["dropped"]
    assert any(k.startswith("clip:text_model.") for k in summary["dropped"])
    torch.save(micro_model.sam.state_dict(), tmp_path / "sam.pth")
    model, tok = build_from_components(_config(), tmp_path / "base", tmp_path / "sam.pth")
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        ref_logits = llama(input_ids=ids).logits
        hidden, _ = model.language_forward(model.mllm.get_input_embeddings()(ids))
        torch.testing.assert_close(model.lm_logits(hidden)[..., :ref_logits.shape[-1]], ref_logits,
                                   atol=1e-5, rtol=1e-5)
        pixels = torch.randn(2, 3, 32, 32)
        feats = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(model.image_features(pixels), feats @ w.T + b, atol=1e-5, rtol=1e-5)
    assert model.mllm.get_input_embeddings().weight.shape[0] == len(tok)


def test_conversion_errors_name_files_and_keys(llava_v1, tmp_path, capsys):
    src, clip_dir, *_ = llava_v1
    extra = torch.load(src / "pytorch_model-00001-of-00002.bin", weights_only=True)
    extra["vision_resampler.weight"] = torch.zeros(1)
    torch.save(extra, src / "pytorch_model-00001-of-00002.bin")
    with pytest.raises(CheckpointError, match=r"no place in the LLaVA base: \['llava:vision_resampler.weight'\]"):
        convert_llava_v1(src, clip_dir, tmp_path / "o")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mm_hidden_size": 1024}))
    with pytest.raises(CheckpointError, match="mm_hidden_size 1024 differs .* wrong --vision-tower"):
        convert_llava_v1(src, clip_dir, tmp_path / "o")
    (src / "pytorch_model-00002-of-00002.bin").unlink()
    assert gsva_main(["convert", "llava", "--src", str(src), "--vision-tower", str(clip_dir),
                      "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_unconverted_v1_config_against_hf_llava_is_explained(micro_model, tokenizer, tmp_path):
    micro_model.mllm.save_pretrained(tmp_path / "llava")
    tokenizer.save_pretrained(tmp_path / "llava")
    torch.save(micro_model.sam.state_dict(), tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="gsva convert llava"):
        build_from_components(_config(), tmp_path / "llava", tmp_path / "sam.pth")


def test_mlp2x_gelu_projector_keys(llava_v1, micro_model, tmp_path):
    """LLaVA-1.5-style ``mm_projector.{0,2}`` (Linear-GELU-Linear) maps to transformers' linear_1/linear_2."""
    src, clip_dir, llama, clip, w, b = llava_v1
    shard = src / "pytorch_model-00001-of-00002.bin"
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    part = {k: v for k, v in torch.load(shard, weights_only=True).items() if not k.startswith("model.mm_projector.")}
    for name in (f.name for f in src.glob("pytorch_model-*.bin")):
        state = torch.load(src / name, weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("model.mm_projector.")}
        torch.save(state, src / name)
    h, v = w.shape
    mlp = {"model.mm_projector.0.weight": torch.randn(h, v) * 0.1, "model.mm_projector.0.bias": torch.randn(h) * 0.1,
           "model.mm_projector.2.weight": torch.randn(h, h) * 0.1, "model.mm_projector.2.bias": torch.randn(h) * 0.1}
    torch.save({**part, **mlp}, shard)
    index["weight_map"] = {k: f for k, f in index["weight_map"].items() if not k.startswith("model.mm_projector.")}
    index["weight_map"].update({k: shard.name for k in mlp})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mm_projector_type": "mlp2x_gelu"}))
    convert_llava_v1(src, clip_dir, tmp_path / "base")
    torch.save(micro_model.sam.state_dict(), tmp_path / "sam.pth")
    gc = _config()
    gc = dataclasses.replace(gc, vision=dataclasses.replace(gc.vision, projector_type="mlp2x_gelu"))
    model, _ = build_from_components(gc, tmp_path / "base", tmp_path / "sam.pth")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        ref = torch.nn.functional.gelu(feats @ mlp["model.mm_projector.0.weight"].T + mlp["model.mm_projector.0.bias"])
        ref = ref @ mlp["model.mm_projector.2.weight"].T + mlp["model.mm_projector.2.bias"]
        torch.testing.assert_close(model.image_features(pixels), ref, atol=1e-5, rtol=1e-5)


# openai/clip-vit-large-patch14 as older transformers saved it: values equal to the defaults (image_size 224, ...)
# are left out of the file
SPARSE_CLIP_L14 = {"vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                     "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
                   "text_config": {}, "model_type": "clip"}
LLAVA_V1_7B = {"architectures": ["LlavaLlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
               "mm_hidden_size": 1024, "mm_use_im_start_end": True, "mm_vision_select_layer": -2,
               "mm_vision_tower": "openai/clip-vit-large-patch14", "model_type": "llava", "num_attention_heads": 32,
               "num_hidden_layers": 32, "tune_mm_mlp_adapter": False, "use_mm_proj": True, "vocab_size": 32003}


def test_sparse_config_files_are_read_with_transformers_defaults():
    from gsva.convert.llava import _configs

    vision, text, im_start_end = _configs(LLAVA_V1_7B, SPARSE_CLIP_L14, Path("llava/config.json"),
                                          Path("clip/config.json"))
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (224, 14, 1024)
    assert (text.max_position_embeddings, text.rms_norm_eps, text.rope_theta) == (2048, 1e-6, 10000.0)
    assert text.num_key_value_heads == 32 and im_start_end
    flat = SPARSE_CLIP_L14["vision_config"]  # a CLIPVisionModel file is the vision config itself
    assert _configs(LLAVA_V1_7B, flat, Path("l"), Path("c"))[0] == vision


def test_config_errors_name_the_file_at_fault():
    from gsva.convert.llava import _configs

    bad_clip = {"vision_config": {"hidden_size": 30, "num_attention_heads": 4}}
    with pytest.raises(CheckpointError, match=r"^clip/config.json: not a CLIP vision config") as err:
        _configs(LLAVA_V1_7B, bad_clip, Path("llava/config.json"), Path("clip/config.json"))
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"^llava/config.json: mm_hidden_size 1024 .*clip/config.json"):
        _configs(LLAVA_V1_7B, {"hidden_size": 768}, Path("llava/config.json"), Path("clip/config.json"))
    with pytest.raises(CheckpointError, match=r"^llava/config.json: not a LLaMA config"):
        _configs({**LLAVA_V1_7B, "hidden_size": 4097}, SPARSE_CLIP_L14, Path("llava/config.json"),
                 Path("clip/config.json"))


def test_conversion_of_a_sparse_clip_folder(llava_v1, tmp_path):
    """The CLIP folder's config.json rewritten as transformers' ``to_diff_dict`` writes it (defaults left out)."""
    from transformers import CLIPVisionConfig

    src, clip_dir, *_ = llava_v1
    cfg = json.loads((clip_dir / "config.json").read_text())
    vision = cfg.get("vision_config", cfg)
    defaults = CLIPVisionConfig().to_dict()
    sparse = {k: v for k, v in vision.items() if k not in defaults or defaults[k] != v}
    assert len(sparse) < len(vision)
    (clip_dir / "config.json").write_text(json.dumps({"vision_config": sparse} if "vision_config" in cfg else sparse))
    summary = convert_llava_v1(src, clip_dir, tmp_path / "base")
    assert summary["vision"].image_size == 32
