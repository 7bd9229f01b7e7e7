"""Single source of the control-token strings and fixed numbers used across the project.

Sources: official GSVA ``model/llava/constants.py`` and ``utils/utils.py`` (token strings, IGNORE_INDEX),
segment-anything ``modeling/sam.py`` (pixel mean/std), OpenAI CLIP (image mean/std).
"""

SEG_TOKEN = "[SEG]"
"""One token id shared by every present target; its predicting hidden state becomes a SAM prompt."""
REJ_TOKEN = "[REJ]"
"""Emitted for a named target that is absent from the image; decodes no mask."""
IMAGE_TOKEN = "<image>"
"""Image placeholder; expanded to T copies (one per image feature) in ``input_ids``."""
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"
CONTROL_TOKENS = (SEG_TOKEN, REJ_TOKEN, IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN)
"""In the order they are added to a tokenizer: the official order ([SEG], [REJ], then <im_start>, <im_end>;
LeapLabTHU/GSVA at 618dc79, ``model/prepare_model_tokenizer.py``, ``add_task_tokens``) and our <image> placeholder last,
so a LLaVA tokenizer extended here gives the released GSVA checkpoints' ids to the official tokens."""

IGNORE_INDEX = -100
"""Label value ignored by the language-model cross-entropy (PyTorch/HF convention)."""

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
"""SAM normalisation mean, RGB, on the 0-255 pixel scale (segment_anything/modeling/sam.py)."""
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""CLIP normalisation mean, RGB, on the 0-1 pixel scale (openai/CLIP)."""
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

MAX_IMAGE_PIXELS = 50_000_000
"""Images with more pixels than this are downscaled while decoding (a 20000x20000 upload never hits RAM whole)."""
