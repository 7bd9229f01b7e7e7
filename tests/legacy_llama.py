"""A small real LLaMA-style sentencepiece tokenizer, built here, and the official GSVA tokenization of a prompt
string written out step by step (the reference for :mod:`gsva.legacy_tokenization`).

The reference follows the official code literally: LLaVA ``mm_utils.tokenizer_image_token`` (split on
``"<image>"``, BOS kept on the first part only, the image id -200 between parts), transformers <= 4.44
``PreTrainedTokenizer.tokenize`` (split on the added tokens, longest match, no stripping) and the slow
``LlamaTokenizer._tokenize`` with ``legacy=True`` (``sp_model.encode`` per chunk), and the label masking of GSVA's
``collate_fn`` (LLaVA ``preprocess_v1``: per round, ``instruction_len = len(ids(parts[0] + " ASSISTANT: ")) - 2``).
``tests/data/official_tokenization_4.44.2.json`` holds what transformers 4.44.2 itself gives on the same model
(``tests/tools/official_tokenization_oracle.py``).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

IMAGE_TOKEN_INDEX = -200
ADDED = ("[SEG]", "[REJ]", "<im_start>", "<im_end>")  # GSVA add_task_tokens order: ids 500, 501, 502, 503
SPECIAL = ("<unk>", "<s>", "</s>")  # LLaMA's, ids 0, 1, 2


def build_llama_sentencepiece() -> bytes:
    """A 500-piece BPE model with LLaMA's settings (byte fallback, split digits, dummy prefix, identity
    normalisation, unk/bos/eos = 0/1/2), trained on a fixed word list; deterministic."""
    import sentencepiece as spm

    rng = random.Random(0)
    words = ("a chat between curious human and an artificial intelligence assistant the gives helpful detailed "
             "polite answers to human's questions user assistant can you segment in this image please what are "
             "respond with segmentation masks sure they is of mask referred left dog red cup zebra results output "
             "it thing people sit on").split()
    lines = []
    for _ in range(4000):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        if rng.random() < 0.3:
            s = s.capitalize()
        if rng.random() < 0.2:
            s = s.upper()
        lines.append(s + rng.choice([".", ",", "?", ":", "", " 12"]))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=500, model_type="bpe", character_coverage=1.0,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return buf.getvalue()


def write_llama_tokenizer_folder(folder: Path, model: bytes) -> Path:
    """An original LLaMA tokenizer folder: ``tokenizer.model`` and a ``tokenizer_config.json`` without ``legacy``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 1024}))
    return folder


class OfficialTokenization:
    """The official pipeline on a prompt string (module docstring)."""

    def __init__(self, model: bytes) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(model)
        n = self.sp.get_piece_size()
        self.added = {tok: n + i for i, tok in enumerate(ADDED)}
        self.added.update({tok: self.sp.piece_to_id(tok) for tok in SPECIAL})

    def _tokenize(self, text: str) -> list[int]:
        """``tokenizer(text).input_ids``: BOS, then added tokens and sentencepiece chunks."""
        ids, chunk, i = [self.added["<s>"]], "", 0
        names = sorted(self.added, key=len, reverse=True)
        while i < len(text):
            hit = next((t for t in names if text.startswith(t, i)), None)
            if hit is None:
                chunk += text[i]
                i += 1
                continue
            if chunk:
                ids += self.sp.encode(chunk)
                chunk = ""
            ids.append(self.added[hit])
            i += len(hit)
        if chunk:
            ids += self.sp.encode(chunk)
        return ids

    def input_ids(self, prompt: str) -> list[int]:
        """``tokenizer_image_token(prompt, tokenizer)``."""
        chunks = [self._tokenize(c) for c in prompt.split("<image>")]
        ids = [chunks[0][0]]
        for k, chunk in enumerate(chunks):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            ids += chunk[1:]
        return ids

    def labels(self, prompt: str) -> list[int]:
        """GSVA ``collate_fn`` label masking of a llava_v1 conversation ending in ``"</s>"``."""
        target = self.input_ids(prompt)
        total, cur, sep = len(target), 1, " ASSISTANT: "
        target[:1] = [-100]
        for rou in prompt.split("</s>"):
            if not rou:
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            round_len = len(self.input_ids(rou))
            instruction_len = len(self.input_ids(parts[0] + sep)) - 2
            target[cur:cur + instruction_len] = [-100] * instruction_len
            cur += round_len
        target[cur:] = [-100] * (total - cur)
        assert cur == total, "the official masking lost its place (would not happen on these prompts)"
        return target
