"""Regenerate ``tests/data/official_tokenization_4.44.2.json``: the official GSVA tokenization, by transformers
4.44.2 itself, of the prompts of ``tests/legacy_cases.py`` on the sentencepiece model of ``tests/legacy_llama.py``.

Run it from the repository root, in an environment with the official code's tokenizer stack and without our
package's transformers::

    python3 -m venv "$ORACLE_VENV" && "$ORACLE_VENV/bin/pip" install transformers==4.44.2 tokenizers==0.19.1 \\
        sentencepiece==0.2.3 protobuf
    python -m tests.tools.official_tokenization_oracle --dump-inputs inputs.json   # our venv: cases + model
    "$ORACLE_VENV/bin/python" -m tests.tools.official_tokenization_oracle --oracle inputs.json \\
        > tests/data/official_tokenization_4.44.2.json

The oracle side sets the tokenizer up as GSVA ``main.py`` does (``AutoTokenizer(use_fast=False)``, pad = unk,
``add_tokens("[SEG]")``, ``add_tokens("[REJ]")``, ``add_tokens([<im_start>, <im_end>], special_tokens=True)``),
tokenizes with LLaVA's ``tokenizer_image_token`` and masks labels as GSVA's ``collate_fn``.
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import tempfile


def dump_inputs(path: str) -> None:
    from tests.legacy_cases import prompt_cases
    from tests.legacy_llama import build_llama_sentencepiece

    model = build_llama_sentencepiece()
    json.dump({"model": base64.b64encode(model).decode(), "prompts": [c[1] for c in prompt_cases()]}, open(path, "w"))


def oracle(path: str) -> None:
    import transformers
    from transformers import AutoTokenizer

    data = json.load(open(path))
    model = base64.b64decode(data["model"])
    folder = tempfile.mkdtemp()
    open(os.path.join(folder, "tokenizer.model"), "wb").write(model)
    json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "add_bos_token": True, "add_eos_token": False, "model_max_length": 1024},
              open(os.path.join(folder, "tokenizer_config.json"), "w"))
    tok = AutoTokenizer.from_pretrained(folder, use_fast=False, padding_side="right", model_max_length=1024)
    assert type(tok).__name__ == "LlamaTokenizer" and tok.legacy
    tok.pad_token = tok.unk_token
    tok.add_tokens("[SEG]")
    tok.add_tokens("[REJ]")
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)

    def tokenizer_image_token(prompt):  # LLaVA mm_utils.tokenizer_image_token
        chunks = [tok(c).input_ids for c in prompt.split("<image>")]
        ids, offset = [], 0
        if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
            offset = 1
            ids.append(chunks[0][0])
        for k, x in enumerate(chunks):
            if k:
                ids.extend(([-200] * (offset + 1))[offset:])  # the separator, sliced like every part
            ids.extend(x[offset:])
        return ids

    def labels(prompt, ids):  # GSVA collate_fn, llava_v1
        target, cur, sep = list(ids), 1, " ASSISTANT: "
        target[:1] = [-100]
        for rou in prompt.split("</s>"):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            round_len = len(tokenizer_image_token(rou))
            instruction_len = len(tokenizer_image_token(parts[0])) - 2
            target[cur:cur + instruction_len] = [-100] * instruction_len
            cur += round_len
        target[cur:] = [-100] * (len(target) - cur)
        return target

    out = {"transformers": transformers.__version__, "sentencepiece_sha256": hashlib.sha256(model).hexdigest(),
           "added_ids": {t: tok.convert_tokens_to_ids(t) for t in ("[SEG]", "[REJ]", "<im_start>", "<im_end>")},
           "prompts": []}
    for prompt in data["prompts"]:
        ids = tokenizer_image_token(prompt)
        out["prompts"].append({"prompt": prompt, "ids": ids,
                               "labels": labels(prompt, ids) if prompt.endswith("</s>") else None})
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--dump-inputs", metavar="JSON")
    group.add_argument("--oracle", metavar="JSON")
    args = parser.parse_args()
    dump_inputs(args.dump_inputs) if args.dump_inputs else oracle(args.oracle)
