"""Memory of a full-size GSVA (default ``gsva-vicuna-7b``): exact parameter counts, an analytic estimate, and, on a
CUDA machine with ``--measure``, measured peaks.

    python benchmarks/full_size_memory.py [--config gsva-vicuna-7b] [--targets 5,10] [--batch 2] [--measure]

Without ``--measure`` (no GPU needed) it builds the model on PyTorch's ``meta`` device (no memory, no weights),
counts parameters per part and the trainable set, and prints an **estimate** — labelled as such — of:

* inference weights in bf16, 8-bit (LLM.int8: 1 byte per decoder-Linear weight) and 4-bit (NF4 with double
  quantisation: 0.5 byte + about 0.127 bit of statistics per weight), everything else bf16; plus the KV cache;
* one training step (bf16 weights; fp32 master copy and two AdamW moments for the trainable parameters, bf16
  gradients — ZeRO-2 on one GPU partitions nothing; gradient checkpointing keeps one bf16 hidden state per layer
  boundary; the fp32 logits and their gradient; the [SEG] masks in fp32 at 1024 x 1024 and at the image size).

The estimate leaves out allocator fragmentation, CUDA context and library workspaces (typically 1-3 GB together)
and SAM's ViT-H image encoder activations (frozen, run without gradients, one image at a time), so it is a lower
bound. ``--measure`` builds the model on the GPU in bf16 with random weights and reports
``torch.cuda.max_memory_allocated`` for one question (bf16, 8-bit, 4-bit) and one training step per target count.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gsva.config import get_named_config  # noqa: E402
from gsva.modeling.gsva_model import GSVAModel  # noqa: E402
from gsva.tokens import ControlTokenIds  # noqa: E402
from gsva.trainable import is_trainable  # noqa: E402

GIB = 2**30
LLAMA_VOCAB = 32000 + 4 + 1  # LLaMA + [SEG], [REJ], <im_start>, <im_end> + our <image>


def _ids() -> ControlTokenIds:
    return ControlTokenIds(seg=32000, rej=32001, im_start=32002, im_end=32003, image=32004, bos=1, eos=2, pad=0)


def tokens_for(targets: int, cfg) -> int:
    """Sequence length of one training conversation: image tokens + system/question/answer text (about 60 tokens
    of template and 12 per named target, measured on the official templates with the LLaMA tokenizer: estimate)."""
    return cfg.num_image_tokens + 60 + 12 * targets


def count(model: GSVAModel) -> dict:
    parts: dict[str, int] = {}
    trainable = decoder_linear = 0
    for name, p in model.named_parameters():
        part = ("llm" if ".language_model." in name or name.startswith("mllm.lm_head") else
                "clip" if ".vision_tower." in name else "projector" if "multi_modal_projector" in name else
                "seg_projector" if name.startswith("seg_projector") else "sam")
        parts[part] = parts.get(part, 0) + p.numel()
        if is_trainable(name, model.config.trainable):
            trainable += p.numel()
        if ".language_model.layers." in name and name.endswith("weight") and p.dim() == 2 and "lora_" not in name:
            decoder_linear += p.numel()
    return {"parts": parts, "total": sum(parts.values()), "trainable": trainable, "decoder_linear": decoder_linear}


def estimate(cfg, counts: dict, targets: list[int], batch: int, image_hw=(480, 640)) -> list[tuple[str, float]]:
    total, lin, tr = counts["total"], counts["decoder_linear"], counts["trainable"]
    rest = total - lin
    t = cfg.text
    rows = []
    kv = 2 * t.num_hidden_layers * tokens_for(1, cfg) * t.hidden_size * 2
    rows.append(("inference bf16 (weights + KV cache, one question)", (2 * total + kv) / GIB))
    rows.append(("inference 8-bit", (lin * 1 + rest * 2 + kv) / GIB))
    rows.append(("inference 4-bit (NF4, double quant)", (lin * (0.5 + 0.127 / 8) + rest * 2 + kv) / GIB))
    for n in targets:
        seq = tokens_for(n, cfg)
        weights = 2 * total
        optimizer = tr * (4 + 4 + 4 + 2)  # fp32 master, Adam m and v, bf16 grads
        checkpoints = batch * t.num_hidden_layers * seq * t.hidden_size * 2
        one_layer = batch * seq * (4 * t.hidden_size + 3 * t.intermediate_size) * 2 * 2 \
            + batch * t.num_attention_heads * seq * seq * 2 * 2
        logits = batch * seq * LLAMA_VOCAB * 4 * 2
        masks = batch * n * (cfg.sam.img_size ** 2 + image_hw[0] * image_hw[1]) * 4 * 3
        rows.append((f"training step, {n} targets/sample, batch {batch}",
                     (weights + optimizer + checkpoints + one_layer + logits + masks) / GIB))
    return rows


def measure(cfg, targets: list[int], batch: int) -> list[tuple[str, float]]:  # pragma: no cover - needs CUDA
    """Peak ``max_memory_allocated`` per case, random bf16 weights on the GPU. (Not yet run: no GPU was lent when
    it was written; the estimate above is what docs/benchmarks.md reports.)"""
    from gsva.modeling.seg_tokens import locate_slots
    from gsva.quantization import quantize_language_model
    from gsva.trainable import set_trainable

    rows = []

    def fresh():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.device("cuda"):
            return GSVAModel(cfg, _ids(), LLAMA_VOCAB).to(torch.bfloat16)

    def batch_for(model, n):
        ids = torch.randint(3, 32000, (batch, tokens_for(n, cfg)), device="cuda")
        t = cfg.num_image_tokens
        ids[:, 1:1 + t] = model.token_ids.image
        ids[:, -2 * n - 1:-1:2] = model.token_ids.seg
        return ids

    for mode in (None, "8bit", "4bit"):
        model = fresh().eval()
        if mode:
            quantize_language_model(model, mode)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            ids = batch_for(model, 1)[:1]
            feats = model.image_features(torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size,
                                                     device="cuda", dtype=torch.bfloat16))
            model.language_forward(model.embed_inputs(ids, feats))
            model.sam_image_embeddings(torch.randn(1, 3, cfg.sam.img_size, cfg.sam.img_size, device="cuda",
                                                   dtype=torch.bfloat16))
        rows.append((f"inference {mode or 'bf16'} (measured)", torch.cuda.max_memory_allocated() / GIB))
        del model
    for n in targets:
        model = fresh().train()
        set_trainable(model, cfg.trainable)
        model.mllm.model.language_model.gradient_checkpointing_enable()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, betas=(0.9, 0.95))
        torch.cuda.reset_peak_memory_stats()
        ids = batch_for(model, n)
        feats = model.image_features(torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size,
                                                 device="cuda", dtype=torch.bfloat16))
        hidden, _ = model.language_forward(model.embed_inputs(ids, feats))
        logits = model.lm_logits(hidden).float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        slots = locate_slots(ids, model.token_ids.seg, model.token_ids.rej)
        emb = model.sam_image_embeddings(torch.randn(batch, 3, cfg.sam.img_size, cfg.sam.img_size, device="cuda",
                                                     dtype=torch.bfloat16))
        low = model.decode_masks(emb, model.seg_prompts(hidden, slots), slots.batch_index)
        masks = model.postprocess(low, (cfg.sam.img_size * 3 // 4, cfg.sam.img_size), (480, 640))
        loss = loss + masks.float().sigmoid().mean()
        loss.backward()
        opt.step()
        rows.append((f"training step, {n} targets/sample, batch {batch} (measured)",
                     torch.cuda.max_memory_allocated() / GIB))
        del model, opt
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gsva-vicuna-7b")
    parser.add_argument("--targets", default="5,10")
    parser.add_argument("--batch", type=int, default=2, help="samples per GPU (official: 2)")
    parser.add_argument("--measure", action="store_true", help="measure on the CUDA device (needs about 40 GB)")
    args = parser.parse_args()
    cfg = get_named_config(args.config)
    targets = [int(t) for t in args.targets.split(",")]
    with torch.device("meta"):
        counts = count(GSVAModel(cfg, _ids(), LLAMA_VOCAB))
    print(f"{cfg.name}: {counts['total'] / 1e9:.3f} B parameters "
          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts["parts"].items())
          + f"; trainable {counts['trainable'] / 1e6:.1f} M (LoRA r={cfg.lora.rank}, lm_head, embed_tokens, "
          "[SEG] projector, SAM mask decoder)")
    print("ESTIMATE (analytic, not measured; a lower bound, see the docstring):")
    for name, gib in estimate(cfg, counts, targets, args.batch):
        print(f"  {name:<55} {gib:6.1f} GiB")
    if args.measure:
        if not torch.cuda.is_available():
            print("--measure needs a CUDA device; none here")
            return 1
        print(f"MEASURED on {torch.cuda.get_device_name()}:")
        for name, gib in measure(cfg, targets, args.batch):
            print(f"  {name:<55} {gib:6.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
