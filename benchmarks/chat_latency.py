"""Chat latency: our predictor against LISA/GSVA-style generation on the same weights, in one run.

    python benchmarks/chat_latency.py [--model DIR] [--questions 10] [--seed 2025] [--threads 2]
                                      [--dtype fp32|bf16] [--json OUT]

Each question names three targets (two present, one absent) of a held-out scene (``three_target_case`` of
benchmarks/three_targets.py) and is timed from the raw image to the finished answer with masks, once per method:

* ``ours``: :meth:`GSVAPredictor.set_image` (vision tower, SAM image encoder and the prompt prefix once per image)
  then :meth:`GSVAPredictor.ask` (KV cache, prompt-lookup drafts, all masks in one decoder call); ``ours_streaming``
  the same with a token callback (``on_text``), to show streaming costs nothing measurable;
* ``lisa_style``: what LISA's ``chat.py`` / GSVA's ``evaluate`` do (LISA-style ``model.evaluate``: SAM image
  embeddings per question, then ``generate(..., use_cache=False)`` on the LLaVA model, which re-runs the vision
  tower and the whole sequence at every generated token; masks decoded at the end). Re-implemented here on our
  modules, so both methods run the same weights with the same greedy choice.

Both must give the same answer text and [SEG]/[REJ] decisions (``same_answers``). Prints the medians and the ratio
of medians; targets (issue #18): ratio >= 10 and ours <= 1.0 s per question (image set included) on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from three_targets import three_target_case  # noqa: E402  (the script's folder is on sys.path)

from gsva.data.transforms import clip_preprocess, sam_preprocess  # noqa: E402
from gsva.generation import Generated, SlotChooser  # noqa: E402
from gsva.inference import Answer, EncodedImage, GSVAPredictor  # noqa: E402


@torch.inference_mode()
def lisa_style_answer(predictor: GSVAPredictor, image, question: str) -> Answer:
    """The answer as LISA-style generation computes it: no KV cache, the vision tower and the whole sequence run
    again for every generated token, SAM's image encoder once per question."""
    model, device, dtype = predictor.model, predictor.model.device, predictor.model.dtype
    cfg = model.config
    clip = clip_preprocess(image, cfg.vision.image_size, cfg.vision.preprocess)[None].to(device, dtype)
    sam_pixels, resized = sam_preprocess(image, cfg.sam.img_size)
    embeddings = model.sam_image_embeddings(sam_pixels[None].to(device, dtype))
    ids = predictor._prompt_ids([], question)
    prompt_len = len(ids)
    chooser = SlotChooser(predictor.ids, predictor._banned, predictor.reject_threshold)
    out = Generated()
    budget = min(predictor.max_new_tokens, cfg.max_length - prompt_len)
    objects, features, layout = None, None, None
    while len(out.ids) < budget:
        features, layout = model.image_tokens(clip)  # LLaVA's forward encodes the images at every step
        row = torch.tensor([ids], device=device)
        hidden, _ = model.language_forward(model.embed_inputs(row, features))
        if objects is None and model.uses_object_pointer:
            objects = model.object_slots(hidden[:, :prompt_len], row[:, :prompt_len], layout, [resized])
        token = chooser(hidden[0, -1], model.lm_logits(hidden[0, -1]).float(), out)
        if token is None:
            break
        out.ids.append(token)
        ids.append(token)
    encoded = EncodedImage(image=image, features=features, embeddings=embeddings, resized_hw=resized, layout=layout)
    return predictor._build_answers([(encoded, out, objects)])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    predictor = GSVAPredictor.from_pretrained(args.model, dtype=dtype)
    cases, index = [], 0
    while len(cases) < args.questions + 1:  # the first one warms up
        case = three_target_case(args.seed, index)
        index += 1
        if case is not None:
            scene, asked = case
            cases.append((scene.image, "What are " + ", ".join(p for p, _ in asked) + " in this image?"))
    times = {"ours": [], "ours_streaming": [], "lisa_style": []}
    same, answers = 0, []
    for n, (image, question) in enumerate(cases):
        t0 = time.perf_counter()
        predictor.set_image(image)
        ours = predictor.ask(question)
        t1 = time.perf_counter()
        predictor.set_image(image)
        streamed = predictor.ask(question, on_text=lambda text: None)
        t2 = time.perf_counter()
        lisa = lisa_style_answer(predictor, image, question)
        t3 = time.perf_counter()
        if n == 0:
            continue
        times["ours"].append(t1 - t0)
        times["ours_streaming"].append(t2 - t1)
        times["lisa_style"].append(t3 - t2)
        decisions = [[t.status for t in a.targets] for a in (ours, streamed, lisa)]
        agree = ours.text == streamed.text == lisa.text and decisions[0] == decisions[1] == decisions[2]
        same += agree
        answers.append({"question": question, "ours": ours.text, "lisa_style": lisa.text, "same": agree})
        print(f"{n:3d}  ours {t1 - t0:5.2f} s  streaming {t2 - t1:5.2f} s  lisa-style {t3 - t2:6.2f} s  "
              f"{'same' if agree else 'DIFFERENT'}: {ours.text}", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "model": str(args.model or "shipped default"), "dtype": args.dtype, "questions": len(answers),
        "seed": args.seed, "median_s": medians, "ratio_lisa_over_ours": medians["lisa_style"] / medians["ours"],
        "streaming_over_plain": medians["ours_streaming"] / medians["ours"], "same_answers": same,
        "times_s": times, "answers": answers,
    }
    print(f"median per three-target question, image set included ({args.dtype}, {args.threads} threads): "
          f"ours {medians['ours']:.2f} s, streaming {medians['ours_streaming']:.2f} s, "
          f"LISA-style {medians['lisa_style']:.2f} s: {result['ratio_lisa_over_ours']:.1f}x; "
          f"same answers {same} of {len(answers)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
