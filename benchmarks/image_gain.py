"""Does a model look at the image? Image-conditioned information gain of its answer tokens.

    python benchmarks/image_gain.py [--model DIR] [--data-root data/synth] [--split val] [--items 64]
                                    [--describe-rate 0.5] [--threads 2] [--out FILE.json]

Teacher-forced on training-style conversations of a gRefCOCO-format split (:class:`GRESConversationDataset`, seed 123):
the language-model cross-entropy of every answer token is computed once with the item's own image and once with the
image of the next item in its batch of 8 (``roll(1)``). The gain, CE(other image) - CE(own image) in nats per token,
is reported separately for the ``[SEG]``/``[REJ]`` slot tokens (the presence decisions), the other GRES answer tokens
and, with ``--describe-rate`` > 0, the describe-the-scene answers (:mod:`gsva.data.describe`). A gain near 0 means the
image does not inform those tokens: the model answers from the text. (Measured on gsva-tiny runs; docs/training.md,
"Known weakness".)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gsva.checkpoint import load_model  # noqa: E402
from gsva.constants import IGNORE_INDEX  # noqa: E402
from gsva.data.collate import collate  # noqa: E402
from gsva.data.grefcoco import GRefCOCO  # noqa: E402
from gsva.data.gres_dataset import GRESConversationDataset  # noqa: E402
from gsva.inference import default_model_dir  # noqa: E402
from gsva.tokens import add_control_tokens  # noqa: E402

BATCH = 8


def token_losses(model, batch, clip_pixels: torch.Tensor) -> torch.Tensor:
    """(B, L-1) fp32 next-token CE of ``batch`` with the given CLIP pixels (0 where the label is ignored)."""
    with torch.no_grad():
        feats = model.image_features(clip_pixels)
        hidden, _ = model.language_forward(model.embed_inputs(batch.input_ids, feats), batch.attention_mask)
        logits = model.lm_logits(hidden).float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch.labels[:, 1:],
                                             ignore_index=IGNORE_INDEX, reduction="none")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: the shipped gsva-smol)")
    parser.add_argument("--data-root", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--items", type=int, default=64, help="conversations (rounded down to a multiple of 8)")
    parser.add_argument("--describe-rate", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model or default_model_dir())
    ids = add_control_tokens(tokenizer)
    gref = GRefCOCO(args.data_root / "grefcoco", args.data_root / "images")
    ds = GRESConversationDataset(gref, args.split, tokenizer, ids, model.config, seed=123,
                                 caption_rate=args.describe_rate)
    n = min(args.items, len(ds)) // BATCH * BATCH
    sums = {k: [0.0, 0.0, 0] for k in ("slot", "gres_other", "describe")}
    for start in range(0, n, BATCH):
        batch = collate([ds[i] for i in range(start, start + BATCH)], tokenizer.pad_token_id)
        own = token_losses(model, batch, batch.clip_pixels)
        other = token_losses(model, batch, batch.clip_pixels.roll(1, 0))
        labels = batch.labels[:, 1:]
        is_slot = (labels == ids.seg) | (labels == ids.rej)
        for r in range(BATCH):
            valid = labels[r] != IGNORE_INDEX
            groups = {"describe": valid} if batch.meta[r].get("task") == "describe" else \
                {"slot": valid & is_slot[r], "gres_other": valid & ~is_slot[r]}
            for key, sel in groups.items():
                sums[key][0] += own[r][sel].sum().item()
                sums[key][1] += other[r][sel].sum().item()
                sums[key][2] += int(sel.sum())
    result = {"model": str(args.model or default_model_dir()), "split": args.split, "conversations": n, "groups": {}}
    print(f"{'tokens':12s} {'count':>6s} {'CE own':>8s} {'CE other':>9s} {'gain':>8s}  (nats/token)")
    for key, (own_sum, other_sum, count) in sums.items():
        if count:
            row = {"tokens": count, "ce_own_image": own_sum / count, "ce_other_image": other_sum / count,
                   "gain": (other_sum - own_sum) / count}
            result["groups"][key] = row
            print(f"{key:12s} {count:6d} {row['ce_own_image']:8.4f} {row['ce_other_image']:9.4f} {row['gain']:+8.4f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
