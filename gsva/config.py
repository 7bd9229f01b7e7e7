"""Typed configuration of a GSVA model, saved as ``config.json`` next to the weights.

Every dataclass rejects unknown keys when read back (:func:`GSVAConfig.from_dict`), so a typo in a config file
is an error, not a silently ignored setting.

Named configurations (:data:`NAMED_CONFIGS`):

* ``gsva-smol``: SmolLM2-135M-Instruct (all 30 layers, LoRA r=16 on every linear layer) as the LLaMA of a LLaVA
  whose small vision tower reads words in image patches (``projector_type="word"``), a small SAM; trained in
  stages on synthetic scenes (``train/configs/gsva_smol_*``). All layers, because SmolLM2 has no spare ones:
  measured on a ChatML question/answer, the full model's CE is 1.47 nats/token, its first 10 layers' 24.7, and
  keeping the first 3 + last 7 layers 9.6.
* ``gsva-tiny``: the earlier default, trained from scratch on synthetic data (everything trainable, no LoRA); a
  test fixture now.
* ``gsva-vicuna-7b``: LLaVA-Lightning-7B-v1-1 (LLaMA-7B), CLIP ViT-L/14-224, SAM ViT-H, LoRA r=8.
* ``gsva-vicuna-13b``: LLaVA-13b-v1-1 (LLaMA-13B), LoRA r=64.
* ``gsva-llama2-13b``: llava-llama-2-13b-chat-lightning-preview, LoRA r=64.

The paper configurations follow the GSVA appendix Table A3 and the official ``scripts/train_*.sh``: LoRA alpha 16,
dropout 0.05 on ``q_proj``/``v_proj``; loss weights CE 1.0, BCE 2.0, Dice 0.5. Their architecture numbers are those of
the public checkpoints (LLaMA-7B: 4096 wide, 32 layers; LLaMA-13B: 5120 wide, 40 layers; CLIP ViT-L/14: 1024 wide,
24 layers, 224 px; SAM ViT-H: 1280 wide, 32 blocks, global attention at 7/15/23/31).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "VisionConfig",
    "TextConfig",
    "SamConfig",
    "LoraSettings",
    "LossConfig",
    "TrainableConfig",
    "GSVAConfig",
    "NAMED_CONFIGS",
    "get_named_config",
    "ConfigError",
]


class ConfigError(UserError, ValueError):
    """A configuration file or value is malformed (unknown key, wrong type, impossible value)."""


@dataclass
class VisionConfig:
    """CLIP vision tower + multimodal projector.

    ``feature_layer`` indexes CLIP's hidden states (LLaVA ``mm_vision_select_layer``, -2 for LLaVA-v1); the CLS
    token is always dropped. ``projector_type`` is ``"linear"`` (LLaVA-v1: one Linear), ``"mlp2x_gelu"``
    (LLaVA-1.5), ``"ln_mlp2x_gelu"`` (ours, for towers trained from scratch: each image's tokens centred and
    layer-normed first; see :class:`gsva.modeling.mllm.NormedMlpProjector`) or ``"word"`` (ours, for a small tower
    in front of a pretrained language model: each patch becomes G tokens that are the language model's own
    embeddings of the words the tower reads there, one word from each of ``word_groups``; see
    :class:`gsva.modeling.word_projector.WordProjector`) or ``"object_words"`` (ours: the same patch words grouped
    into at most ``max_objects`` objects, written left to right, ``len(word_groups) + 1`` tokens each, with a fixed
    position code of RMS ``position_scale``; patches are grouped by their word of group ``object_group``; see
    :class:`gsva.modeling.object_projector.ObjectWordProjector`). ``preprocess`` is ``"center_crop"``
    (CLIP's: shortest side to ``image_size``, then a centred crop, as the official code does) or ``"resize"``
    (squash the whole image to ``image_size`` x ``image_size``, so no object near the border is cut away; used by
    ``gsva-tiny``).
    """

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    feature_layer: int = -2
    projector_type: str = "linear"
    preprocess: str = "center_crop"
    word_groups: list[list[str]] = field(default_factory=list)
    max_objects: int = 0
    object_group: int = 0
    position_scale: float = 0.0

    @property
    def reads_words(self) -> bool:
        """Whether the projector emits the language model's embeddings of words read by the tower."""
        return self.projector_type in ("word", "object_words")

    @property
    def num_patches(self) -> int:
        """P, the tower's patch tokens per image: (image_size / patch_size)^2 (256 for ViT-L/14-224)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_patch(self) -> int:
        """G: one image token per patch, or one per word group with the ``"word"`` projector."""
        return len(self.word_groups) if self.projector_type == "word" else 1

    @property
    def num_image_tokens(self) -> int:
        """T, the number of image tokens per image: P x G (256 for ViT-L/14-224), or max_objects x (G + 1) with the
        ``"object_words"`` projector."""
        if self.projector_type == "object_words":
            return self.max_objects * (len(self.word_groups) + 1)
        return self.num_patches * self.tokens_per_patch

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.projector_type not in ("linear", "mlp2x_gelu", "ln_mlp2x_gelu", "word", "object_words"):
            raise ConfigError("vision.projector_type must be 'linear', 'mlp2x_gelu', 'ln_mlp2x_gelu', 'word' or "
                              f"'object_words', got {self.projector_type!r}")
        if self.projector_type == "object_words" and (
                self.max_objects < 1 or not 0 <= self.object_group < len(self.word_groups)
                or self.position_scale < 0 or math.isqrt(self.num_patches) ** 2 != self.num_patches):
            raise ConfigError("vision.projector_type 'object_words' needs max_objects >= 1, object_group indexing "
                              "word_groups, position_scale >= 0 and a square patch grid")
        if self.reads_words and (not self.word_groups or any(
                len(g) < 2 or not all(isinstance(w, str) and w.strip() == w and w for w in g)
                for g in self.word_groups)):
            raise ConfigError("vision.word_groups must hold groups of >= 2 non-empty words without surrounding spaces")
        if self.preprocess not in ("center_crop", "resize"):
            raise ConfigError(f"vision.preprocess must be 'center_crop' or 'resize', got {self.preprocess!r}")
        if not -self.num_hidden_layers - 1 <= self.feature_layer <= self.num_hidden_layers:
            raise ConfigError(f"vision.feature_layer {self.feature_layer} is outside the tower's hidden states")


@dataclass
class TextConfig:
    """The LLaMA language model. ``vocab_size`` counts the base vocabulary *before* the control tokens are added.

    It is informational: the embedding matrix always has ``len(tokenizer)`` rows. For ``gsva-tiny`` it is the size
    *requested* from sentencepiece (1000); the trained tokenizer may be smaller (the shipped one has 888 base pieces).

    ``base``: a pretrained model of :data:`gsva.base_models.BASE_MODELS` whose weights and tokenizer are loaded at
    build time (its first ``num_hidden_layers`` layers); None = random initialisation (or weights from a full
    checkpoint). ``tie_word_embeddings``: ``lm_head`` shares the input embedding matrix (SmolLM2, not LLaMA-1/2).
    ``tokenization``: "hf" (the HF tokenizer encodes each text piece) or "legacy_sentencepiece" (the LLaMA
    ``tokenizer.model`` encodes text as transformers <= 4.44's slow ``LlamaTokenizer`` did for the released
    GSVA/LISA/LLaVA-v1 weights, :mod:`gsva.legacy_tokenization`; the checkpoint then carries that file).
    """

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    vocab_size: int = 32000
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    base: str | None = None
    tie_word_embeddings: bool = False
    tokenization: str = "hf"

    def validate(self) -> None:
        from .legacy_tokenization import TOKENIZATIONS

        if self.tokenization not in TOKENIZATIONS:
            raise ConfigError(f"text.tokenization must be one of {', '.join(TOKENIZATIONS)}, got {self.tokenization!r}")
        if self.base is not None:
            from .base_models import BASE_MODELS

            if self.base not in BASE_MODELS:
                raise ConfigError(f"text.base {self.base!r} is unknown; known: {', '.join(BASE_MODELS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("text.hidden_size must be divisible by text.num_attention_heads")


@dataclass
class SamConfig:
    """Segment Anything: ViT image encoder, prompt encoder and two-way-transformer mask decoder.

    Defaults are SAM ViT-H (``sam_vit_h_4b8939.pth``, segment_anything/build_sam.py). ``prompt_embed_dim`` (C) is the
    width of ``image_embeddings``, of the sparse/dense prompts and of the [SEG] projector output (256 for every
    released SAM). The image-embedding grid is ``img_size / patch_size`` (64 for 1024 / 16); low-res mask logits are
    4x that (256 x 256).
    """

    img_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    encoder_window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16

    @property
    def embedding_size(self) -> int:
        """Side of the square image-embedding grid (64 for SAM ViT-*)."""
        return self.img_size // self.patch_size

    def validate(self) -> None:
        if self.img_size % self.patch_size:
            raise ConfigError("sam.img_size must be a multiple of sam.patch_size")
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            raise ConfigError("sam.encoder_global_attn_indexes must index encoder blocks")


@dataclass
class LoraSettings:
    """LoRA on the language model (official: rank 8 for 7B, 64 for 13B; alpha 16; dropout 0.05; q_proj/v_proj).

    ``rank == 0`` means no LoRA (the tiny default, which trains the whole language model instead).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self) -> None:
        if self.rank < 0:
            raise ConfigError("lora.rank must be >= 0 (0 disables LoRA)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora.dropout must be in [0, 1)")


@dataclass
class LossConfig:
    """Loss weights and Dice constants (official ``model/losses.py`` and ``main.py`` defaults).

    ``slot_ce_weight`` weights the [SEG]/[REJ] targets inside the CE mean (official: 1.0, a plain mean).

    ``point_prompt_weight`` (not in the official recipe, default 0) adds an auxiliary SAM objective for models whose
    SAM is trained from scratch: every object of the image is also segmented from one positive point through SAM's
    own prompt encoder, and that mask's BCE + Dice (same weights as above) is added times this factor. It needs
    instance annotations, and only shapes the image encoder and mask decoder; inference never uses points.

    ``pointer_weight`` (not in the official recipe) weights the object pointer's BCE
    (:func:`gsva.modeling.object_pointer.pointer_loss`); used only with ``seg_prompt="embedding_and_object_box"``.
    """

    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    dice_scale: float = 1000.0
    dice_eps: float = 1e-6
    slot_ce_weight: float = 1.0
    point_prompt_weight: float = 0.0
    pointer_weight: float = 1.0


@dataclass
class TrainableConfig:
    """Which frozen-by-default parts are trained as well.

    Always trainable (official ``init_vision_seg_for_model``): LoRA weights, ``lm_head``, ``embed_tokens``, the [SEG]
    projector and SAM's mask decoder. The switches below add parts that the paper keeps frozen; ``gsva-tiny`` turns
    them all on because it has no pretrained weights to keep.
    """

    vision_tower: bool = False
    mm_projector: bool = False
    sam_image_encoder: bool = False
    llm_layers: bool = False

    @classmethod
    def from_scratch(cls) -> "TrainableConfig":
        return cls(vision_tower=True, mm_projector=True, sam_image_encoder=True, llm_layers=True)


@dataclass
class GSVAConfig:
    """Everything needed to rebuild a GSVA model before its weights are loaded.

    ``num_image_tokens`` (T) is derived from the vision config. ``conv_template`` is ``"llava_v1"`` (official default,
    Vicuna) or ``"chatml"`` (SmolLM2's template; :mod:`gsva.conversation`).
    ``max_length`` bounds prompt + answer tokens (official ``model_max_length`` 1024).
    ``seg_prompt`` is how a [SEG] prompts SAM: ``"embedding"`` (the paper: its projected hidden state is the only
    sparse prompt) or ``"embedding_and_object_box"`` (ours, for ``projector_type="object_words"``: an object pointer
    also picks the image objects the [SEG] names and adds their boxes; :mod:`gsva.modeling.object_pointer`).
    ``pointer_relation_layers``: with the object pointer, the layers of its slot-relation correction
    (:class:`gsva.modeling.object_pointer.SlotRelations`; 0: none, the bilinear score alone).
    ``reject_threshold``: where the answer has a slot, it is ``[SEG]`` when the slot score
    s = P([SEG]) / (P([SEG]) + P([REJ])) (probabilities of the next-token softmax) is at least this value, else
    ``[REJ]``; a probability in [0, 1], chosen on held-out data with :mod:`gsva.scoring.calibration`. None: the
    greedy choice, which is the same as 0.5.
    """

    name: str = "gsva-vicuna-7b"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    loss: LossConfig = field(default_factory=LossConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    conv_template: str = "llava_v1"
    use_im_start_end: bool = True
    max_length: int = 1024
    seg_prompt: str = "embedding"
    pointer_relation_layers: int = 0
    reject_threshold: float | None = None

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_image_tokens

    def validate(self) -> "GSVAConfig":
        """Check every value; return ``self``. Raises :class:`ConfigError`."""
        self.vision.validate()
        self.text.validate()
        self.sam.validate()
        self.lora.validate()
        t = self.reject_threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0):
            raise ConfigError(f"reject_threshold must be null or a probability in [0, 1], got {t!r}")
        if self.conv_template not in ("llava_v1", "chatml"):
            raise ConfigError(f"conv_template {self.conv_template!r} is not supported ('llava_v1' or 'chatml')")
        if self.max_length <= self.num_image_tokens + 8:
            raise ConfigError("max_length must leave room for text after the image tokens")
        if self.max_length > self.text.max_position_embeddings:
            raise ConfigError("max_length exceeds text.max_position_embeddings")
        if self.text.base is not None and self.trainable.llm_layers:
            raise ConfigError("trainable.llm_layers cannot be on with text.base: the base's layers are never saved "
                              "(train them through LoRA)")
        if self.seg_prompt not in ("embedding", "embedding_and_object_box"):
            raise ConfigError(f"seg_prompt {self.seg_prompt!r} is not supported ('embedding' or "
                              "'embedding_and_object_box')")
        if self.seg_prompt == "embedding_and_object_box" and (self.vision.projector_type != "object_words"
                                                              or self.vision.preprocess != "resize"):
            raise ConfigError("seg_prompt 'embedding_and_object_box' needs vision.projector_type 'object_words' and "
                              "vision.preprocess 'resize' (object boxes are fractions of the whole image)")
        r = self.pointer_relation_layers
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"pointer_relation_layers must be an integer >= 0, got {r!r}")
        if r and self.seg_prompt != "embedding_and_object_box":
            raise ConfigError("pointer_relation_layers needs seg_prompt 'embedding_and_object_box' (the object "
                              "pointer)")
        if self.vision.reads_words and self.text.base is None:
            raise ConfigError(f"vision.projector_type {self.vision.projector_type!r} needs text.base (its word "
                              "embeddings come from the base)")
        return self

    # -- serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GSVAConfig":
        """Build from a dict; unknown or missing-typed keys raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a GSVA config must be a JSON object, got {type(data).__name__}")
        return _from_dict(cls, data, "config").validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GSVAConfig":
        """Read a ``config.json``. Raises :class:`ConfigError` naming the file on any problem."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read model config {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name in fields else None
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name} must be an object")
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif value is None and "None" in str(fields[name].type):  # an Optional field set to null
            kwargs[name] = None
        else:
            kwargs[name] = _check_type(value, default, f"{where}.{name}")
    return cls(**kwargs)


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""A number YAML 1.1 (PyYAML) reads as a string: an exponent without a dot in the mantissa, e.g. ``1e-4``."""


def _check_type(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, float) and isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
        value = float(value)  # `lr: 1e-4` in a recipe, or the override lr=1e-4
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where} has the wrong type: {type(value).__name__} (expected {type(default).__name__})")
    return value


def _tiny() -> GSVAConfig:
    return GSVAConfig(
        name="gsva-tiny",
        vision=VisionConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
            image_size=160, patch_size=16, feature_layer=-1, projector_type="ln_mlp2x_gelu", preprocess="resize",
        ),
        text=TextConfig(
            hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=1000, max_position_embeddings=512, rope_theta=10000.0,
        ),
        sam=SamConfig(
            img_size=160, patch_size=8, encoder_embed_dim=128, encoder_depth=4, encoder_num_heads=4,
            encoder_global_attn_indexes=[1, 3], encoder_window_size=5, prompt_embed_dim=128, decoder_depth=2,
            decoder_mlp_dim=512, decoder_num_heads=4, iou_head_hidden_dim=128, mask_in_chans=8,
        ),
        lora=LoraSettings(rank=0),
        loss=LossConfig(point_prompt_weight=1.0),
        trainable=TrainableConfig.from_scratch(),
        max_length=448,
    )


SMOL_WORD_GROUPS = [["small", "large", "background"],
                    ["red", "green", "blue", "yellow", "purple", "orange", "background"],
                    ["circle", "square", "triangle", "star", "hexagon", "heart", "background"]]
"""What the ``gsva-smol`` tower reads in each patch: a size, a colour and a shape word (the synthetic generator's
attributes, :mod:`gsva.data.synth`), "background" where no object covers the patch."""


def _smol() -> GSVAConfig:
    return GSVAConfig(
        name="gsva-smol",
        vision=VisionConfig(
            hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
            image_size=160, patch_size=20, feature_layer=-1, projector_type="object_words", preprocess="resize",
            word_groups=[list(g) for g in SMOL_WORD_GROUPS], max_objects=8, object_group=1, position_scale=0.05,
        ),
        text=TextConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
            rope_theta=100000.0, base="smollm2-135m-instruct", tie_word_embeddings=True,
        ),
        sam=_tiny().sam,
        lora=LoraSettings(rank=16, alpha=32, dropout=0.05,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"]),
        loss=LossConfig(),
        trainable=TrainableConfig(vision_tower=False, mm_projector=False, sam_image_encoder=False, llm_layers=False),
        conv_template="chatml",
        max_length=512,
        seg_prompt="embedding_and_object_box",
    )


def _vicuna7b() -> GSVAConfig:
    return GSVAConfig(name="gsva-vicuna-7b", text=TextConfig(tokenization="legacy_sentencepiece"),
                      lora=LoraSettings(rank=8))


def _llama13b(name: str) -> GSVAConfig:
    text = TextConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=40, max_position_embeddings=4096 if "llama2" in name else 2048,
                      rms_norm_eps=1e-5 if "llama2" in name else 1e-6, tokenization="legacy_sentencepiece")
    return GSVAConfig(name=name, text=text, lora=LoraSettings(rank=64))


NAMED_CONFIGS = {
    "gsva-smol": _smol,
    "gsva-tiny": _tiny,
    "gsva-vicuna-7b": _vicuna7b,
    "gsva-vicuna-13b": lambda: _llama13b("gsva-vicuna-13b"),
    "gsva-llama2-13b": lambda: _llama13b("gsva-llama2-13b"),
}


def get_named_config(name: str) -> GSVAConfig:
    """Return a fresh copy of a named config. Raises :class:`ConfigError` for an unknown name."""
    try:
        return NAMED_CONFIGS[name]().validate()
    except KeyError:
        raise ConfigError(f"unknown config {name!r}; known: {', '.join(NAMED_CONFIGS)}") from None
