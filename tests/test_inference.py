"""Predictor: generation with a KV cache records the same [SEG] states as a teacher-forced pass; multi-turn."""

import numpy as np
import pytest
import torch

from gsva.conversation import Turn, render_conversation, tokenize_pieces
from gsva.inference import GSVAPredictor, default_model_dir


def _image():
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def _generate(predictor, enc, prompt):
    """The predictor's greedy answer to one prompt, without an answer hint (a :class:`gsva.generation.Generated`)."""
    (generated,), _ = predictor._generate([(enc, prompt, [], [])])
    return generated


@pytest.mark.parametrize("draft_tokens", [0, 8])
def test_cached_generation_matches_a_teacher_forced_pass(micro_model, tokenizer, draft_tokens):
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=6, draft_tokens=draft_tokens)
    enc = predictor.encode_image(_image())
    question = "Can you segment the red circle in this image?"
    prompt, _ = tokenize_pieces(render_conversation([Turn(question)]), tokenizer, predictor.ids,
                                micro_model.config.num_image_tokens)
    gen = _generate(predictor, enc, prompt).ids
    # make [SEG] the greedy choice at generation step 1: its lm_head row becomes 3x the row of the token chosen there
    with torch.no_grad():
        head = micro_model.mllm.lm_head.weight
        head[predictor.ids.seg] = 3 * head[gen[1]]
    out = _generate(predictor, enc, prompt)
    gen, states, scores, is_seg = out.ids, out.states, out.scores, out.is_seg
    assert gen[1] == predictor.ids.seg and is_seg[0] and 0.5 < scores[0] <= 1.0
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        hidden, _ = micro_model.language_forward(micro_model.embed_inputs(ids, enc.features))
        logits = micro_model.lm_logits(hidden)[0]
    p = len(prompt)
    # the state recorded for the slot is the one at the position before [SEG] (the last token that predicts it)
    torch.testing.assert_close(states[0], hidden[0, p], rtol=1e-4, atol=1e-4)
    assert logits[p - 1 : p - 1 + len(gen)].argmax(-1).tolist()[:2] == gen[:2]


def test_the_cached_prompt_prefix_gives_the_full_prefill_answer(micro_model, tokenizer):
    """The per-image prefix (system message + image tokens) is computed once; decoding from it matches a prefill of
    the whole prompt, for the first turn and for a later one."""
    import dataclasses

    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=6, draft_tokens=0)
    enc = predictor.encode_image(_image())
    assert enc.prefix is not None
    assert enc.prefix.ids.count(predictor.ids.image) == micro_model.config.num_image_tokens
    assert enc.prefix.hidden.shape[:2] == (1, len(enc.prefix.ids))
    bare = dataclasses.replace(enc, prefix=None)
    history = []
    for question in ("Can you segment the red circle in this image?", "and the blue star?"):
        prompt = predictor._prompt_ids(history, question)
        assert tuple(prompt[:len(enc.prefix.ids)]) == enc.prefix.ids
        cached, full = _generate(predictor, enc, prompt), _generate(predictor, bare, prompt)
        assert cached.ids == full.ids
        for a, b in zip(cached.states, full.states):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        _, history = predictor.answer(enc, history, question)
    assert enc.prefix.cache.get_seq_length() == len(enc.prefix.ids)  # never extended in place


def test_no_generation_budget_gives_an_empty_answer(micro_model, tokenizer):
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=0)
    predictor.set_image(_image())
    answer = predictor.ask("the red circle")
    assert answer.text == "" and answer.targets == []


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


def test_prompt_lookup_copies_the_next_phrase_in_question_order():
    from gsva.prompt_lookup import draft_from_prompt

    prompt = [9, 1, 5, 6, 7, 2, 1, 5, 8, 4, 3]  # "... the red heart , the red star ..." as ids; 1 = "the"
    # the tail [1, 5] occurs twice; the match at or after the cursor wins, the draft stops before a stop id
    assert draft_from_prompt(prompt, [0, 1, 5], cursor=0, max_draft=3) == ([6, 7, 2], 3)
    assert draft_from_prompt(prompt, [0, 1, 5], cursor=4, max_draft=3) == ([8, 4, 3], 8)
    assert draft_from_prompt(prompt, [0, 1, 5], cursor=4, max_draft=3, stop_ids={4}) == ([8], 8)
    # the longest tail with a match is used: [7, 1, 5] has none, [1, 5] has
    assert draft_from_prompt(prompt, [7, 1, 5], cursor=0, max_draft=1) == ([6], 3)
    assert draft_from_prompt(prompt, [42], cursor=2, max_draft=4) == ([], 2)
    # a copy in progress continues from where it is, not from a later repeat of the same words
    repeated = [1, 5, 6, 7, 1, 5, 6, 8]
    assert draft_from_prompt(repeated, [0, 1, 5, 6], cursor=2, max_draft=3) == ([7, 1, 5], 3)
    assert draft_from_prompt(repeated, [0, 7, 1, 5, 6], cursor=5, max_draft=3) == ([8], 7)
    assert draft_from_prompt(prompt, [1], cursor=0, max_draft=0) == ([], 0)


def test_prompt_lookup_matches_rej_as_seg_and_copies_the_source():
    from gsva.prompt_lookup import draft_from_prompt

    seg, rej = 100, 101
    hint = [2, 9, 1, 5, seg, 2, 1, 6, seg, 3]  # ", x the red [SEG] , the blue [SEG] ."
    # the answer rejected the first target; "red [REJ] ," still continues the hint, whose own ids are drafted
    assert draft_from_prompt(hint, [1, 5, rej, 2], cursor=0, max_draft=4, aliases={rej: seg}) == ([1, 6, seg, 3], 6)
    # without the alias only the tail [2] matches, first at the start
    assert draft_from_prompt(hint, [1, 5, rej, 2], cursor=0, max_draft=4) == ([9, 1, 5, seg], 1)


def test_question_phrases_and_answer_hint(tokenizer):
    from gsva.conversation import answer_pieces, question_phrases, tokenize_pieces
    from gsva.prompt_lookup import answer_hint
    from gsva.tokens import add_control_tokens

    assert question_phrases("What are the red heart, the zebra in this image?") == ["the red heart", "the zebra"]
    assert question_phrases("  Can you segment   the cat in this image? ") == ["the cat"]
    assert question_phrases("What are the dogs in this image? Please output segmentation masks.") == ["the dogs"]
    assert question_phrases("What is the dog in this image?") == ["the dog"]
    assert question_phrases("What colour is the large shape?") is None
    assert question_phrases("What are , in this image?") is None
    ids = add_control_tokens(tokenizer)
    hint = answer_hint("What are the red heart, the zebra in this image?", tokenizer, ids, "llava_v1")
    expected = tokenize_pieces(answer_pieces(["the red heart", "the zebra"], [True, True], 0), tokenizer, ids, 0)[0]
    assert hint == expected and hint.count(ids.seg) == 2 and hint[-1] == ids.eos
    assert answer_hint("What colour is the large shape?", tokenizer, ids, "chatml") == []


def test_answer_hints_in_every_style_and_the_style_of_an_answer(tokenizer):
    """``answer_hints`` writes the all-present answer in each style; ``hint_style`` names the style of an answer
    from them ([REJ] read as [SEG]); ``common_prefix`` is what the hints of several styles share."""
    from gsva.conversation import answer_pieces
    from gsva.prompt_lookup import answer_hint, answer_hints, common_prefix, hint_style
    from gsva.templates import ANSWER_STARTS
    from gsva.tokens import add_control_tokens

    ids = add_control_tokens(tokenizer)
    question = "What are the red heart, the zebra in this image?"
    hints = answer_hints(question, tokenizer, ids, "chatml")
    assert len(hints) == len(ANSWER_STARTS) == 5
    assert hints == [answer_hint(question, tokenizer, ids, "chatml", c) for c in range(5)]
    llava = answer_hints(question, tokenizer, ids, "llava_v1")
    for c in range(5):
        answer = tokenize_pieces(answer_pieces(["the red heart", "the zebra"], [True, False], c), tokenizer, ids,
                                 0)[0][:-1]
        assert hint_style(answer, llava, ids) == c
    assert hint_style(answer[:-1], llava, ids) is None
    assert answer_hints("What colour is the heart?", tokenizer, ids, "chatml") == []
    # styles 2-4 all start "Sure, the"; with style 0 nothing is shared
    shared = common_prefix([llava[2], llava[3], llava[4]])
    assert tokenizer.decode(shared).strip() == "Sure, the"
    assert tokenizer.decode(common_prefix([llava[0], llava[2]])).strip() == ""
    assert common_prefix([]) == [] and common_prefix([[1, 2]]) == [1, 2] and common_prefix([[1, 2], [1]]) == [1]


def test_hint_drafts_guess_the_last_style_and_draft_only_the_shared_start_in_a_batch(micro_model, tokenizer):
    """One question alone drafts its whole guessed hint; decoded together, only what the styles of recent answers share;
    every style's hint is a draft source, the guessed one first."""
    import collections

    from gsva.prompt_lookup import answer_hints, common_prefix

    predictor = GSVAPredictor(micro_model, tokenizer)
    hints = answer_hints("Can you segment the red circle in this image?", tokenizer, predictor.ids,
                         micro_model.config.conv_template)
    first, source = predictor._hint_drafts(hints, batched=True)
    assert first == hints[0] and source == [t for h in hints for t in h]  # nothing seen: style 0, in full
    predictor._hint_styles[1] = 4
    predictor._recent_styles[1] = collections.deque([2, 4, 2])
    first, source = predictor._hint_drafts(hints, batched=False)
    assert first == hints[4] and source[:len(hints[4])] == hints[4] and len(source) == sum(map(len, hints))
    first, _ = predictor._hint_drafts(hints, batched=True)
    assert first == common_prefix([hints[2], hints[4]]) and 0 < len(first) < len(hints[4])
    assert predictor._hint_drafts([], batched=True) == ([], [])


def test_drafted_decoding_gives_the_one_token_answer():
    """Three-target questions on held-out scenes with the shipped gsva-tiny: prompt-lookup drafts change the number
    of forward passes, not the answer. gsva-tiny seldom copies the asked phrases, so most drafts are rejected here
    (the crop path); the pass counts of a model that copies are in benchmarks/three_targets.py."""
    from gsva.data.synth import make_scene, scene_expressions

    base = GSVAPredictor.from_pretrained(default_model_dir().parent / "gsva-tiny", draft_tokens=0)
    drafted = GSVAPredictor(base.model, base.tokenizer, draft_tokens=8)
    calls = []
    forward = base.model.language_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    base.model.language_forward = counting
    passes = {}
    for scene_index in range(3):
        scene = make_scene(2024, scene_index)
        phrases = [p for p, _ in scene_expressions(scene, 2024, scene_index)][:3]
        question = "What are " + ", ".join(phrases) + " in this image?"
        encoded = base.encode_image(scene.image)
        answers = []
        for name, predictor in (("one", base), ("drafted", drafted)):
            calls.clear()
            answers.append(predictor.answer(encoded, [], question)[0])
            passes[name] = passes.get(name, 0) + len(calls)
        one, fast = answers
        assert fast.text == one.text
        assert [(t.phrase, t.status) for t in fast.targets] == [(t.phrase, t.status) for t in one.targets]
        for a, b in zip(one.targets, fast.targets):
            assert abs(a.score - b.score) < 1e-4
            if a.mask is not None:
                assert (a.mask != b.mask).mean() < 1e-3
    assert passes["drafted"] < passes["one"], passes


def test_reject_threshold_decides_the_slots_and_0_5_is_greedy():
    """reject_threshold picks [SEG] or [REJ] by the slot score: 0 accepts every slot, a threshold above every score
    rejects every slot (the answer text says so), 0.5 gives the greedy answer; the config's value is the default."""
    import dataclasses

    from gsva.config import ConfigError
    from gsva.data.synth import make_scene, scene_expressions
    from gsva.errors import InputError

    base = GSVAPredictor.from_pretrained(default_model_dir().parent / "gsva-tiny")
    assert base.reject_threshold is None
    seen = {"seg": 0, "rej": 0}
    for scene_index in range(2):
        scene = make_scene(2024, scene_index)
        phrases = [p for p, _ in scene_expressions(scene, 2024, scene_index)][:3]
        question = "What are " + ", ".join(phrases) + " in this image?"
        encoded = base.encode_image(scene.image)
        greedy = base.answer(encoded, [], question)[0]
        for t in greedy.targets:
            seen[t.status] += 1
        for tau in (0.0, 0.5, 1.0):
            answer = GSVAPredictor(base.model, base.tokenizer, reject_threshold=tau).answer(encoded, [], question)[0]
            assert answer.targets and all((t.status == "seg") == (t.score >= tau) for t in answer.targets), tau
            assert all((t.mask is not None) == (t.status == "seg") for t in answer.targets)
            assert answer.text.count("[SEG]") + answer.text.count("[REJ]") == len(answer.targets)
            if tau == 0.5:
                assert answer.text == greedy.text
            if tau == 0.0:
                assert "[REJ]" not in answer.text
    assert seen["seg"] and seen["rej"], seen  # greedy answers both ways here, so the thresholds change decisions
    from gsva.evaluation.prompts import refer_answer, refer_question  # teacher forcing decides the same way
    from gsva.evaluation.protocols import teacher_forced_outcomes

    present = [True, False, True]
    case = (scene.image, refer_question(phrases), refer_answer(phrases, present), present)
    for tau in (0.0, 0.5, 1.0):
        outcomes = teacher_forced_outcomes(GSVAPredictor(base.model, base.tokenizer, reject_threshold=tau), [case])[0]
        assert [o.pred_reject for o in outcomes] == [o.score < tau for o in outcomes], tau
    config = dataclasses.replace(base.model.config, reject_threshold=0.7)
    config.validate()
    base.model.config = config
    assert GSVAPredictor(base.model, base.tokenizer).reject_threshold == 0.7
    with pytest.raises(ConfigError, match="reject_threshold"):
        dataclasses.replace(config, reject_threshold=1.5).validate()
    with pytest.raises(InputError, match="reject_threshold"):
        GSVAPredictor(base.model, base.tokenizer, reject_threshold=-0.1)


@pytest.mark.parametrize("draft_tokens", [0, 8])
def test_batched_generation_gives_each_answer_it_gives_alone(micro_model, tokenizer, draft_tokens):
    """Questions of two images, of different lengths, and a follow-up turn (no shared prefix) decoded together
    give the answers, slot scores and masks of one-at-a-time decoding."""
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=12, draft_tokens=draft_tokens)
    with torch.no_grad():  # answers that reach slots
        micro_model.mllm.lm_head.weight[predictor.ids.seg] += 0.5 * micro_model.mllm.lm_head.weight.abs().max()
    first = predictor.encode_image(_image())
    second = predictor.encode_image(np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    _, history = predictor.answer(first, [], "the red circle")
    requests = [(first, [], "Can you segment the red circle and the blue star in this image?"),
                (second, [], "the star"),
                (first, history, "and the blue star?"),
                (second, [], "What are the left square, the green object, the large hexagon in this image?")]
    alone = [predictor.answer(*r, decode_rejected=True)[0] for r in requests]
    together = [a for a, _ in predictor.answer_batch(requests, decode_rejected=True)]
    assert any(a.targets for a in alone)
    for a, b in zip(alone, together):
        assert a.text == b.text
        assert [t.status for t in a.targets] == [t.status for t in b.targets]
        assert [t.score for t in a.targets] == pytest.approx([t.score for t in b.targets], abs=1e-4)
        for s, t in zip(a.targets, b.targets):
            assert np.mean(s.slot_mask != t.slot_mask) < 1e-3
    assert predictor.answer_batch(requests[1:2])[0][1][-1].question == "the star"


def test_streaming_shows_the_answer_growing_to_its_final_text(micro_model, tokenizer):
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=10, draft_tokens=0)
    predictor.set_image(_image())
    shown = []
    answer = predictor.ask("the red circle", on_text=shown.append)
    assert answer.text and shown[-1] == answer.text and len(shown) > 1
    assert not any(t.endswith("\ufffd") for t in shown[:-1])  # never half a UTF-8 character (random weights
    # write bytes; the shipped default's stream grows by whole words: tests/test_default_model.py)
    predictor.reset()
    assert predictor.ask("the red circle").text == answer.text  # streaming changes nothing


def test_batch_draft_tokens_set_the_drafts_of_batched_passes_only(micro_model, tokenizer, monkeypatch):
    """``batch_draft_tokens`` applies when several questions are decoded together; one question keeps
    ``draft_tokens``; both are checked."""
    import gsva.inference as inference
    from gsva.errors import InputError

    seen = []
    real = inference.decode

    def spy(*args, **kwargs):
        seen.append(args[10])  # draft_tokens
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "decode", spy)
    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=6, draft_tokens=8, batch_draft_tokens=2)
    enc = predictor.encode_image(np.zeros((40, 56, 3), np.uint8))
    predictor.answer(enc, [], "the red circle")
    predictor.answer_batch([(enc, [], "the red circle"), (enc, [], "the blue star")])
    assert seen == [8, 2]
    assert GSVAPredictor(micro_model, tokenizer, draft_tokens=3).batch_draft_tokens == 3  # default: the same
    assert GSVAPredictor(micro_model, tokenizer, draft_tokens=3, batch_draft_tokens=9).batch_draft_tokens == 3
    with pytest.raises(InputError, match="batch_draft_tokens"):
        GSVAPredictor(micro_model, tokenizer, batch_draft_tokens=-1)


def test_encode_images_gives_the_encodings_of_one_at_a_time(micro_model, tokenizer):
    """Several images in one pass of each encoder and of the prompt prefix: each encoding equals the one
    ``encode_image`` gives alone (up to float rounding), and its prefix cache is a row of its own."""
    predictor = GSVAPredictor(micro_model, tokenizer)
    images = [_image(), np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)]
    together = predictor.encode_images(images)
    assert len(together) == 2 and predictor.encode_images([]) == []
    for image, b in zip(images, together):
        a = predictor.encode_image(image)
        assert b.image is image and b.resized_hw == a.resized_hw
        torch.testing.assert_close(b.features, a.features, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.embeddings, a.embeddings, atol=1e-5, rtol=1e-5)
        assert b.prefix.ids == a.prefix.ids
        torch.testing.assert_close(b.prefix.hidden, a.prefix.hidden, atol=1e-5, rtol=1e-5)
        for x, y in zip(a.prefix.cache.layers, b.prefix.cache.layers):
            assert y.keys.shape == x.keys.shape and y.keys.shape[0] == 1
            torch.testing.assert_close(y.keys, x.keys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_answer_many_groups_by_length_and_returns_the_answers_in_request_order(micro_model, tokenizer, batch_size):
    """``answer_many`` decodes ``batch_size`` requests at a time, grouped by prompt length, and returns each
    request's own answer (the one it gets alone) in request order."""
    from gsva.errors import InputError

    predictor = GSVAPredictor(micro_model, tokenizer, max_new_tokens=12)
    with torch.no_grad():  # answers that reach slots
        micro_model.mllm.lm_head.weight[predictor.ids.seg] += 0.5 * micro_model.mllm.lm_head.weight.abs().max()
    first, second = predictor.encode_images([_image(), np.random.default_rng(1).integers(0, 256, (64, 48, 3),
                                                                                           dtype=np.uint8)])
    requests = [(first, [], "What are the left square, the green object, the large hexagon in this image?"),
                (second, [], "the star"),
                (first, [], "Can you segment the red circle in this image?"),
                (second, [], "What is the small blue heart in this image?"),
                (first, [], "the cup")]
    alone = [predictor.answer(*r, decode_rejected=True)[0] for r in requests]
    many = predictor.answer_many(requests, batch_size, decode_rejected=True)
    assert [h[-1].question for _, h in many] == [q for _, _, q in requests]
    for a, (b, _) in zip(alone, many):
        assert a.text == b.text
        assert [t.status for t in a.targets] == [t.status for t in b.targets]
        assert [t.score for t in a.targets] == pytest.approx([t.score for t in b.targets], abs=1e-4)
        for s, t in zip(a.targets, b.targets):
            assert np.mean(s.slot_mask != t.slot_mask) < 1e-3
    with pytest.raises(InputError, match="batch size"):
        predictor.answer_many(requests, 0)
