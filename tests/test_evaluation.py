"""Evaluation end to end on the shipped tiny default: both protocols, prompt modes/styles, every dataset layout,
``gsva score`` reproducing the printed numbers, batching and two-process sharding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gsva.cli import main as gsva_main
from gsva.evaluation import open_benchmark, run_benchmark
from gsva.evaluation.command import main as eval_main
from gsva.evaluation.protocols import match_slots
from gsva.inference import Answer, GSVAPredictor, Target
from tests import refer_fixtures as fx

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "gsva" / "assets" / "gsva-tiny"  # for the plumbing tests: the default is loaded by the module fixture


@pytest.fixture(scope="module")
def predictor():
    return GSVAPredictor.from_pretrained(None)


def _evaluate(capsys, *args):
    assert eval_main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def _table(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:6].strip().rstrip(":") in ("rela", "gsva", "dmmi", "lisa",
                                                                                     "rec")]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["generate", "teacher-forced"])
def test_grefcoco_both_protocols_and_gsva_score_reproduces(tmp_path, capsys, synth_root, protocol):
    out = tmp_path / "run"
    model = [] if protocol == "generate" else ["--model", TINY]  # the README's command on the default, once
    printed = _evaluate(capsys, "--dataset", "grefcoco", "--data-root", synth_root, "--split", "val", "--out", out,
                        "--protocol", protocol, "--limit", "3", *model)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == protocol and metrics["dataset"] == "grefcoco"
    assert set(metrics["scorers"]) == {"rela", "gsva", "rec"} and metrics["prompt_mode"] == "per-expression"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["num_expressions"] == metrics["scorers"]["rela"]["num_expressions"] > 0
    assert {"id", "image_id", "sentence", "gt_empty", "pred_reject", "score", "gt_mask", "pred_mask"} <= set(rows[0])
    assert all(0.0 <= r["score"] <= 1.0 for r in rows if r["score"] is not None)
    assert (out / "calibration.json").exists() and (out / "calibration.png").stat().st_size > 0
    assert gsva_main(["score", "--predictions", str(out / "predictions.jsonl")]) == 0
    rescored = capsys.readouterr().out
    assert _table(printed) and _table(rescored) == _table(printed)


@pytest.mark.slow
def test_one_command_both_protocols(tmp_path, capsys, synth_root):
    printed = _evaluate(capsys, "--dataset", "grefcoco", "--data-root", synth_root, "--split", "val", "--out",
                        tmp_path, "--protocol", "both", "--limit", "1", "--batch-size", "4", "--model", TINY)
    assert printed.count("rela: gIoU") == 2
    for protocol in ("generate", "teacher-forced"):
        assert json.loads((tmp_path / protocol / "metrics.json").read_text())["protocol"] == protocol


@pytest.mark.slow
def test_bad_annotation_is_one_error_line(tmp_path):
    (tmp_path / "grefcoco").mkdir()
    (tmp_path / "grefcoco" / "grefs(unc).json").write_text("[{]")
    proc = subprocess.run([sys.executable, str(REPO / "eval/evaluate.py"), "--dataset", "grefcoco", "--data-root",
                           str(tmp_path), "--split", "val", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "grefs(unc).json: cannot read JSON" in proc.stderr


@pytest.mark.slow
def test_teacher_forced_batches_agree_with_single(predictor, synth_root):
    bench = open_benchmark("grefcoco", synth_root, "val")
    one = run_benchmark(bench, predictor, "teacher-forced", batch_size=1, limit=2)
    many = run_benchmark(bench, predictor, "teacher-forced", batch_size=5, limit=2)
    assert [r["id"] for r in one] == [r["id"] for r in many]
    assert [r["pred_reject"] for r in one] == [r["pred_reject"] for r in many]
    assert np.allclose([r["score"] for r in one], [r["score"] for r in many], atol=1e-4)
    from gsva.scoring import sample_from_row

    for a, b in zip(one, many):
        pa, pb = sample_from_row(a).pred, sample_from_row(b).pred
        assert (pa != pb).mean() < 0.01


@pytest.mark.slow
def test_per_image_prompts_and_official_strings(predictor, synth_root):
    bench = open_benchmark("grefcoco", synth_root, "val")
    n = sum(len(i.expressions) for i in bench.images[:2])
    for protocol in ("generate", "teacher-forced"):
        rows = run_benchmark(bench, predictor, protocol, prompt_mode="per-image", prompt_style="official", limit=2)
        assert len(rows) == n and len({r["id"] for r in rows}) == n


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["refzom", "reasonseg", "refcoco"])
def test_other_layouts_end_to_end(tmp_path, capsys, dataset):
    {"refzom": fx.write_refzom, "reasonseg": fx.write_reasonseg, "refcoco": fx.write_refcoco}[dataset](tmp_path)
    split = {"refzom": "test", "reasonseg": "val", "refcoco": "testA"}[dataset]
    out = tmp_path / "run"
    printed = _evaluate(capsys, "--dataset", dataset, "--data-root", tmp_path, "--split", split, "--out", out,
                        "--protocol", "teacher-forced", "--batch-size", "2", "--model", TINY)
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {"refzom": {"dmmi", "gsva", "rela"}, "reasonseg": {"lisa"}, "refcoco": {"lisa", "rec"}}[dataset]
    assert set(metrics["scorers"]) == expected
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    if dataset == "reasonseg":
        assert all("ignore_mask" in r for r in rows)
    if dataset == "refzom":
        assert [r["gt_empty"] for r in rows] == [False, True]
    assert gsva_main(["score", "--predictions", str(out / "predictions.jsonl")]) == 0
    assert _table(capsys.readouterr().out) == _table(printed)


@pytest.mark.slow
def test_generate_protocol_rows_do_not_depend_on_the_batch_size(predictor, synth_root):
    """Questions of several images decoded together (batch 2 and 5, across image boundaries, grouped by prompt
    length over LENGTH_GROUPS batches) give the rows of one at a time, in benchmark order: the same answers,
    decisions and masks; scores up to float rounding."""
    from gsva.scoring import sample_from_row

    bench = open_benchmark("grefcoco", synth_root, "val")
    one = run_benchmark(bench, predictor, "generate", batch_size=1, limit=3)
    two = run_benchmark(bench, predictor, "generate", batch_size=2, limit=3)
    five = run_benchmark(bench, predictor, "generate", batch_size=5, limit=3)
    assert len(one) == len(five) == len(two) > 5
    for a, b in [*zip(one, five), *zip(one, two)]:
        drop = ("score", "pred_mask")  # masks: up to pixels at the threshold (images are encoded in batches)
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
        m, n = sample_from_row(a).pred, sample_from_row(b).pred
        assert (m & n).sum() >= 0.99 * (m | n).sum()
        assert (a["score"] is None) == (b["score"] is None)
        if a["score"] is not None:
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


@pytest.mark.slow
def test_generate_batches_hold_at_most_a_batch_of_images(predictor, synth_root, monkeypatch):
    """The questions of LENGTH_GROUPS batches wait together, but never those of more than batch_size images (so a
    dataset of one expression per image keeps as few encodings alive as one batch needs)."""
    from gsva.evaluation.runner import LENGTH_GROUPS

    bench = open_benchmark("grefcoco", synth_root, "val")
    events = []
    encode, many = predictor.encode_images, predictor.answer_many
    monkeypatch.setattr(predictor, "encode_images", lambda images: events.append(("encode", len(images)))
                        or encode(images))
    monkeypatch.setattr(predictor, "answer_many", lambda requests, batch_size, **kw: events.append(
        ("answer", len(requests), len({id(r[0]) for r in requests}))) or many(requests, batch_size, **kw))
    rows = run_benchmark(bench, predictor, "generate", batch_size=2, limit=5)
    answered = [e for e in events if e[0] == "answer"]
    assert sum(e[1] for e in answered) == len(rows)  # one question per expression
    assert all(n <= 2 * LENGTH_GROUPS and images <= 2 for _, n, images in answered)
    assert max(n for _, n, _ in answered) > 2  # more than one batch grouped by length
    assert max(n for kind, n, *_ in events if kind == "encode") <= 2


def test_slot_matching_by_phrase_then_order():
    def t(phrase, status="seg"):
        return Target(phrase=phrase, status=status, score=0.9)

    answer = Answer("", [t("the cup"), t("something"), t("the dog", "rej")])
    assert match_slots(answer, ["the dog", "the cup", "the cat"]) == ([2, 0, 1], 0)
    assert match_slots(answer, ["the dog"]) == ([2], 2)
    assert match_slots(Answer("", []), ["a", "b"]) == ([None, None], 0)


@pytest.mark.slow
def test_bad_arguments(predictor, synth_root):
    bench = open_benchmark("grefcoco", synth_root, "val")
    with pytest.raises(ValueError, match="batch size must be an integer >= 1"):
        run_benchmark(bench, predictor, "generate", batch_size=0)
    with pytest.raises(ValueError, match="protocol must be"):
        run_benchmark(bench, predictor, "oracle")


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, synth_root):
    """Sharding over 2 processes (torchrun) gives the one-process rows; on the small gsva-tiny (any model shards
    the same way; the default would only add three loads of its base)."""
    common = ["--dataset", "grefcoco", "--data-root", str(synth_root), "--split", "val", "--limit", "3",
              "--protocol", "teacher-forced", "--model", str(TINY)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "eval/evaluate.py"), *common, "--out", str(tmp_path / "one")],
                   check=True, env=env, capture_output=True, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    str(REPO / "eval/evaluate.py"), *common, "--out", str(tmp_path / "two")],
                   check=True, env=env, capture_output=True, timeout=600)
    one = (tmp_path / "one/predictions.jsonl").read_text()
    two = (tmp_path / "two/predictions.jsonl").read_text()
    assert one == two
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m1["scorers"] == m2["scorers"] and m2["world_size"] == 2


def test_teacher_forced_matches_the_training_forward(micro_model, tokenizer):
    """Decisions, scores and re-evaluated masks against an independent path: GSVAModel.forward on the same ids."""
    import torch

    from gsva.conversation import Turn, render_conversation
    from gsva.data.collate import collate, encode_sample
    from gsva.evaluation.prompts import refer_answer, refer_question
    from gsva.evaluation.protocols import teacher_forced_outcomes

    predictor = GSVAPredictor(micro_model, tokenizer)
    ids, cfg = predictor.ids, micro_model.config
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    convs = []
    for exprs, present in ((["the red circle", "the blue star"], [True, False]), (["the green square"], [False])):
        convs.append((image, refer_question(exprs), refer_answer(exprs, present), present))
    outcomes = teacher_forced_outcomes(predictor, convs)
    mixed = []
    for (img, q, answer, present), outs in zip(convs, outcomes):
        sample = encode_sample(img, render_conversation([Turn(q, answer)], cfg.use_im_start_end), None, tokenizer,
                               ids, cfg)
        with torch.no_grad():
            first = micro_model(collate([sample], ids.pad))
            logits = first.lm_logits[0, first.slots.predict_position].float()
            reeval = sample.input_ids.masked_fill(sample.input_ids == ids.rej, ids.seg)
            sample.input_ids = reeval
            second = micro_model(collate([sample], ids.pad))
        assert len(outs) == len(present) == len(first.slots)
        for j, (out, here) in enumerate(zip(outs, present)):
            top = int(logits[j].argmax())
            assert out.pred_reject == ((top != ids.seg) if here else (top == ids.rej))
            p = torch.softmax(logits[j], -1)
            assert out.score == pytest.approx(float(p[ids.seg] / (p[ids.seg] + p[ids.rej])), abs=1e-5)
            expected = (second.mask_logits[0][j] > 0).numpy()
            assert out.mask.shape == (24, 32) and (out.mask != expected).mean() < 0.002
            mixed.append(0 < expected.mean() < 1)
    assert any(mixed)  # the comparison is not between two all-empty (or all-full) masks


def test_official_prompt_strings_verbatim():
    from gsva.evaluation.prompts import (clean_expression, reasonseg_answer, reasonseg_question, refer_answer,
                                         refer_question)

    refs = [clean_expression("Man in red."), clean_expression("the dog")]
    assert refs == ["man in red", "the dog"]
    assert refer_question(refs, "official") == " What are man in red, the dogin this image? Please output segmentation masks."
    text = "".join(p.text or p.control for p in refer_answer(refs, [True, False], "official"))
    assert text == " Sure,man in red:[SEG], the dog:[REJ].<eos>"
    assert refer_question(refs) == "Can you segment man in red, the dog in this image?"
    ours = "".join(p.text or p.control for p in refer_answer(refs, [True, False]))
    assert ours == " Sure, the mask of man in red is [SEG], the mask of the dog is [REJ].<eos>"
    assert reasonseg_question("Why?", True, "official") == " Why? Please output segmentation mask."
    assert reasonseg_question("the cup", False) == "What is the cup in this image? Please output segmentation mask."
    assert "".join(p.text or p.control for p in reasonseg_answer("official")) == " [SEG]<eos>"
