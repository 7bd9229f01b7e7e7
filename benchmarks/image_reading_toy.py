"""Can the gsva-tiny architecture, trained from scratch, learn to read an image? Two toy tasks, same model code.

    python benchmarks/image_reading_toy.py --task name|exists [--steps 400] [--eval-every 50] [--lr 1e-3]
                                           [--precision bf16|fp32] [--threads 1] [--seed 0]

Images are 160x120 grey with 1-3 coloured 30-pixel squares (``--task name``: exactly one), colours from
:data:`gsva.data.synth.COLORS`. The conversation uses the llava_v1 template with the image first, as in training.

* ``name``: "What colour is it?" -> " <colour>." The answer depends on the image only (no question to match).
* ``exists``: "Is there a <colour> square?" -> " circle." (yes) or " star." (no), each half of the time: a
  question-conditioned presence decision, the kind a ``[SEG]``/``[REJ]`` slot needs. (Shape words stand in for
  yes/no because they are single tokens of the small tokenizer.)

A fresh ``gsva-tiny`` model (the shipped config, its own tokenizer trained on the toy texts) is trained with AdamW
(betas 0.9/0.95, as the recipe) on batches of 8, and every ``--eval-every`` steps its accuracy on 200 held-out
toy questions is printed (chance: 1/6 for ``name``, 1/2 for ``exists``). Figures measured here are in
docs/training.md ("Known weakness").
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gsva.config import get_named_config  # noqa: E402
from gsva.constants import IGNORE_INDEX  # noqa: E402
from gsva.conversation import SYSTEM_PROMPT, Piece, Turn, render_conversation  # noqa: E402
from gsva.data.collate import collate, encode_sample  # noqa: E402
from gsva.data.synth import COLORS  # noqa: E402
from gsva.modeling.gsva_model import GSVAModel  # noqa: E402
from gsva.tokenizer_build import train_tokenizer  # noqa: E402
from gsva.tokens import add_control_tokens  # noqa: E402

H, W, SIDE = 120, 160, 30
YES, NO = "circle", "star"


def toy_item(task: str, rng: random.Random) -> tuple[np.ndarray, str, str]:
    """(image (H, W, 3) uint8, question, answer word) of one toy conversation."""
    colours = list(COLORS)
    here = rng.sample(colours, 1 if task == "name" else rng.randint(1, 3))
    image = np.full((H, W, 3), 128, np.uint8)
    for c in here:
        x, y = rng.randint(0, W - SIDE), rng.randint(0, H - SIDE)
        image[y:y + SIDE, x:x + SIDE] = COLORS[c]
    if task == "name":
        return image, "What colour is it?", here[0]
    asked = rng.choice(here) if rng.random() < 0.5 else rng.choice([c for c in colours if c not in here])
    return image, f"Is there a {asked} square?", YES if asked in here else NO


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("name", "exists"), required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = get_named_config("gsva-tiny")
    texts = [SYSTEM_PROMPT + " USER: ", " ASSISTANT:", "What colour is it?"]
    texts += [f"Is there a {c} square? {c}. {YES}. {NO}." for c in COLORS] * 50
    tokenizer = train_tokenizer(texts, vocab_size=400)
    ids = add_control_tokens(tokenizer)
    model = GSVAModel(cfg, ids, len(tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    words = list(COLORS) if args.task == "name" else [YES, NO]
    word_ids = [tokenizer.encode(" " + w, add_special_tokens=False) for w in words]
    if any(len(w) != 1 for w in word_ids):
        raise RuntimeError(f"answer words are not single tokens: {dict(zip(words, word_ids))}")
    word_ids = torch.tensor([w[0] for w in word_ids])

    def encode(image, question, answer):
        pieces = render_conversation([Turn(question, [Piece(" " + answer + ".", train=True),
                                                      Piece(control="<eos>", train=True)])])
        return encode_sample(image, pieces, np.zeros((0, H, W), np.uint8), tokenizer, ids, cfg)

    train_rng, eval_items = random.Random(args.seed), [toy_item(args.task, random.Random(10_000 + i)) for i in range(200)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    print(f"task {args.task}: chance {1 / len(words):.2f}; lr {args.lr}, {args.precision}", flush=True)
    for step in range(1, args.steps + 1):
        model.train()
        batch = collate([encode(*toy_item(args.task, train_rng)) for _ in range(8)], tokenizer.pad_token_id)
        with autocast:
            loss = model(batch).loss.total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0:
            model.eval()
            correct = 0
            for start in range(0, len(eval_items), 20):
                chunk = eval_items[start:start + 20]
                batch = collate([encode(*item) for item in chunk], tokenizer.pad_token_id)
                with torch.no_grad(), autocast:
                    logits = model(batch).lm_logits.float()
                for r, (_, _, answer) in enumerate(chunk):
                    pos = int((batch.labels[r] != IGNORE_INDEX).nonzero()[0, 0]) - 1  # predicts the answer word
                    correct += words[int(logits[r, pos, word_ids].argmax())] == answer
            print(f"step {step:5d}  loss {loss.item():.3f}  accuracy {correct / len(eval_items):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
