"""GSVA: Generalized Segmentation via Multimodal LLMs (CVPR 2024), on maintained libraries.

Shape legend used in every docstring of this package:

    B   images (one conversation row per image)
    L   tokens in a row, image tokens expanded (input_ids and hidden states align 1:1)
    T   image tokens per image (256 for CLIP ViT-L/14-224)
    D   language-model hidden size (4096 for 7B)
    V   vocabulary size, control tokens included
    S   [SEG] + [REJ] slots in a batch;  N  [SEG] slots (masks to decode)
    C   SAM prompt/embedding dim (256);  h x w  SAM image-embedding grid (64 x 64)
    H x W  an image's original size in pixels (x right, y down)

Mask values are logits unless a name says ``prob`` or the dtype is bool/uint8.
"""

__version__ = "0.1.0"
