"""Predictor: generation with a KV cache records the same [SEG] states as a teacher-forced pass; multi-turn."""

import numpy as np
import torch

from gsva.conversation import Turn, render_conversation, tokenize_pieces
from gsva.inference import GSVAPredictor


def _image():
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def test_cached_generation_matches_a_teacher_forced_pass(micro_model, tokenizer):
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=6)
    enc = predictor.encode_image(_image())
    question = "Can you segment the red circle in this image?"
    prompt, _ = tokenize_pieces(render_conversation([Turn(question)]), tokenizer, predictor.ids,
                                micro_model.config.num_image_tokens)
    gen, *_ = predictor._generate(enc, prompt)
    # make [SEG] the greedy choice at generation step 1: its lm_head row becomes 3x the row of the token chosen there
    with torch.no_grad():
        head = micro_model.mllm.lm_head.weight
        head[predictor.ids.seg] = 3 * head[gen[1]]
    gen, states, scores, is_seg = predictor._generate(enc, prompt)
    assert gen[1] == predictor.ids.seg and is_seg[0] and 0.5 < scores[0] <= 1.0
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        hidden, _ = micro_model.language_forward(micro_model.embed_inputs(ids, enc.features))
        logits = micro_model.lm_logits(hidden)[0]
    p = len(prompt)
    # the state recorded for the slot is the one at the position before [SEG] (the last token that predicts it)
    torch.testing.assert_close(states[0], hidden[0, p], rtol=1e-4, atol=1e-4)
    assert logits[p - 1 : p - 1 + len(gen)].argmax(-1).tolist()[:2] == gen[:2]


def test_answer_masks_are_at_the_original_size_and_history_grows(micro_model, tokenizer):
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=8)
    with torch.no_grad():
        micro_model.mllm.lm_head.weight[predictor.ids.seg] += 5.0 * micro_model.mllm.lm_head.weight.abs().max()
    predictor.set_image(_image())
    answer = predictor.ask("the red circle [SEG] <image>")
    assert answer.targets and all(t.status == "seg" for t in answer.targets)
    assert all(t.mask.shape == (40, 56) and t.mask.dtype == bool for t in answer.targets)
    assert len(predictor.history) == 1
    predictor.ask("and the blue star?")
    assert len(predictor.history) == 2
    predictor.set_image(_image())
    assert predictor.history == []
