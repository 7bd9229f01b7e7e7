"""8-bit and 4-bit inference (bitsandbytes, CPU backend): the language model quantised, everything else intact."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gsva.checkpoint import save_model
from gsva.conversation import Turn, answer_pieces, render_conversation
from gsva.data.collate import collate, encode_sample
from gsva.inference import GSVAPredictor
from gsva.modeling.gsva_model import GSVAModel
from gsva.quantization import quantize_language_model
from gsva.tokens import add_control_tokens

from .conftest import micro_config

REPO = Path(__file__).resolve().parents[1]


def _logits(model, tokenizer):
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    pieces = render_conversation([Turn("Can you segment a, b in this image?",
                                       answer_pieces(["a", "b"], [True, False], style=2))])
    batch = collate([encode_sample(image, pieces, None, tokenizer, model.token_ids, model.config)],
                    tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.eval()(batch)
    return out.lm_logits[0], out.mask_logits[0]


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantised_language_model_stays_close(tokenizer, mode):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = GSVAModel(micro_config(lora_rank=4, from_scratch=False), add_control_tokens(tokenizer), len(tokenizer))
    ref_logits, ref_masks = _logits(model, tokenizer)
    sam_before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    replaced = quantize_language_model(model, mode)
    cfg = micro_config().text
    assert replaced == cfg.num_hidden_layers * 7  # q, k, v, o, gate, up, down per layer
    kind = bnb.nn.Linear8bitLt if mode == "8bit" else bnb.nn.Linear4bit
    assert isinstance(model.mllm.model.language_model.layers[0].self_attn.q_proj, kind)  # LoRA merged, then quantised
    assert isinstance(model.mllm.lm_head, torch.nn.Linear) and not isinstance(model.mllm.lm_head, kind)
    for k, v in model.sam.state_dict().items():
        torch.testing.assert_close(v, sam_before[k], rtol=0, atol=0)
    logits, masks = _logits(model, tokenizer)
    corr = torch.corrcoef(torch.stack([logits.flatten(), ref_logits.flatten()]))[0, 1]
    assert corr > (0.99 if mode == "8bit" else 0.9), corr
    assert not torch.equal(logits, ref_logits)  # quantisation really happened
    assert masks.shape == ref_masks.shape


def test_predictor_answers_in_4bit(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = GSVAModel(micro_config(), add_control_tokens(tokenizer), len(tokenizer))
    save_model(model, tokenizer, tmp_path / "m")
    predictor = GSVAPredictor.from_pretrained(tmp_path / "m", quantization="4bit", max_new_tokens=8)
    predictor.set_image(np.zeros((20, 30, 3), np.uint8))
    answer = predictor.ask("the red circle")
    assert isinstance(answer.text, str)
    with pytest.raises(ValueError, match="quantization must be one of"):
        GSVAPredictor.from_pretrained(tmp_path / "m", quantization="2bit")


@pytest.mark.slow
def test_gsva_predict_load_in_8bit_on_the_default(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(tmp_path / "img.png")
    proc = subprocess.run([sys.executable, "-m", "gsva", "predict", "--image", str(tmp_path / "img.png"), "--query",
                           "the red circle", "--out", str(tmp_path / "o"), "--load-in-8bit"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "result.json").is_file()
