"""Stage (c) of gsva-smol: SAM trained with point and box prompts."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from gsva.config import get_named_config
from gsva.data.grefcoco import GRefCOCO
from gsva.sam_pretrain import (BOX_NOISE_MAX, SamPromptDataset, SamRecipe, SamTrainer, jitter_box, load_sam_weights,
                               mask_iou)


def test_box_jitter_is_bounded_and_keeps_corners_ordered():
    rng = random.Random(0)
    box = np.array([10.0, 20.0, 30.0, 60.0], np.float32)
    shifts = []
    for _ in range(500):
        out = jitter_box(box, rng)
        assert out[2] >= out[0] + 1 and out[3] >= out[1] + 1
        shifts.append(out - box)
    shifts = np.abs(np.array(shifts))
    assert shifts.max() <= BOX_NOISE_MAX + 1e-4
    # 10 % of the side: about 2 px in x (side 20), 4 px in y (side 40)
    assert 1.0 < shifts[:, 0].mean() < 2.5 and 2.0 < shifts[:, 1].mean() < 5.0
    tiny = jitter_box(np.array([5.0, 5.0, 5.5, 5.5], np.float32), rng)
    assert tiny[2] >= tiny[0] + 1


def test_prompts_lie_on_their_instance_in_the_sam_frame(synth_root):
    cfg = get_named_config("gsva-smol")
    gref = GRefCOCO(synth_root / "grefcoco", synth_root / "images")
    data = SamPromptDataset(gref, "train", cfg, prompts_per_image=3, box_rate=0.5, seed=1)
    s = cfg.sam.img_size
    boxes = points = 0
    for i in range(6):
        pixels, masks, prompts, is_box = data[i]
        assert pixels.shape == (3, s, s) and masks.shape[1:] == (s, s) and prompts.shape == (len(masks), 4)
        assert 1 <= len(masks) <= 3 and set(masks.unique().tolist()) <= {0.0, 1.0}
        for m, q, box in zip(masks, prompts, is_box.tolist()):
            if box:
                boxes += 1
                ys, xs = torch.nonzero(m, as_tuple=True)
                # the jittered box still overlaps the instance's own box
                assert q[0] < xs.max() + 1 and q[2] > xs.min() and q[1] < ys.max() + 1 and q[3] > ys.min()
            else:
                points += 1
                x, y = int(q[0]), int(q[1])
                assert q[0] == q[2] and q[1] == q[3] and m[y, x] == 1.0
    assert boxes and points
    again = data[3]
    torch.testing.assert_close(again[2], data[3][2])  # the draw depends on (seed, index, epoch) only


def test_mask_iou_counts_overlap():
    logits = torch.full((2, 4, 4), -1.0)
    logits[0, :2] = 1.0
    masks = torch.zeros(2, 4, 4)
    masks[0, :1] = 1.0
    torch.testing.assert_close(mask_iou(logits, masks), torch.tensor([0.5, 1.0]))


@pytest.mark.slow
def test_sam_stage_trains_resumes_and_drops_into_the_model(synth_root, tmp_path):
    from safetensors.torch import load_file

    from gsva.modeling.gsva_model import GSVAModel
    from gsva.tokens import ControlTokenIds

    recipe = SamRecipe(data_root=str(synth_root), output_dir=str(tmp_path / "sam"), max_steps=2, batch_size=2,
                       save_every=2, log_every=1, val_images=2, num_workers=0, warmup_steps=1,
                       tensorboard=False).validate()
    SamTrainer(recipe).run()
    resumed = SamTrainer(dataclasses.replace(recipe, max_steps=3))
    assert resumed.step == 2
    path = resumed.run()
    meta = json.loads((tmp_path / "sam" / "sam.json").read_text())
    assert meta["steps"] == 3 and 0.0 <= meta["val"]["point_miou"] <= 1.0 and 0.0 <= meta["val"]["box_miou"] <= 1.0
    state = load_file(str(path))
    assert state and all(k.startswith("sam.") for k in state)
    cfg = get_named_config("gsva-tiny")  # same SAM shapes as gsva-smol, no base to build
    ids = ControlTokenIds(seg=5, rej=6, image=7, im_start=8, im_end=9, bos=1, eos=2, pad=0)
    model = GSVAModel(cfg, ids, vocab_size=64)
    load_sam_weights(model, path)
    key = "sam.mask_decoder.iou_token.weight"
    torch.testing.assert_close(model.state_dict()[key], state[key])
