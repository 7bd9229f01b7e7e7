"""Segment Anything, built from the unmodified PyPI package, and prompted with projected [SEG] embeddings.

Shape legend: B images, N prompts ([SEG] slots), C prompt dim (256 for released SAMs), h x w image-embedding grid
(64 x 64 for SAM ViT-*), S = ``img_size`` (1024).

Prompting (official ``modeling_lisa_gsva.py``; the official code patches SAM's prompt encoder, we do not): each
projected [SEG] embedding is one sparse prompt token (no positional encoding, no type embedding added), the dense
prompt is SAM's ``no_mask_embed`` broadcast over the grid, and ``multimask_output=False`` keeps mask token 0.
Positional encodings and prompts are cast to the image-embedding dtype, so bf16/fp16 weights work (SAM keeps its
Gaussian PE matrix and grid in fp32).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..config import SamConfig
from ..constants import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from .sam_import import sam_modeling

__all__ = ["build_sam", "decode_masks", "decode_point_masks", "decode_box_masks"]


def build_sam(cfg: SamConfig) -> nn.Module:
    """Build ``segment_anything.modeling.Sam`` with random weights from ``cfg`` (same modules as ``build_sam.py``).

    The state-dict keys (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) are those of the released
    ``sam_vit_*.pth`` files.
    """
    m = sam_modeling()
    encoder = m.ImageEncoderViT(
        depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.img_size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=cfg.encoder_num_heads, patch_size=cfg.patch_size,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
        window_size=cfg.encoder_window_size, out_chans=cfg.prompt_embed_dim,
    )
    grid = cfg.embedding_size
    prompt_encoder = m.PromptEncoder(
        embed_dim=cfg.prompt_embed_dim, image_embedding_size=(grid, grid), input_image_size=(cfg.img_size, cfg.img_size),
        mask_in_chans=cfg.mask_in_chans,
    )
    decoder = m.MaskDecoder(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
                                        mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
        transformer_dim=cfg.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=cfg.iou_head_hidden_dim,
    )
    return m.Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder,
                 pixel_mean=list(SAM_PIXEL_MEAN), pixel_std=list(SAM_PIXEL_STD))


def decode_masks(sam: nn.Module, image_embeddings: torch.Tensor, prompts: torch.Tensor,
                 image_index: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Low-resolution mask logits for every prompt.

    Args:
        sam: a ``segment_anything`` ``Sam`` module.
        image_embeddings: (B, C, h, w) SAM image-encoder output.
        prompts: (N, C) projected [SEG] embeddings (``sparse_prompt_embeddings``, one token each).
        image_index: (N,) int64, the image (row of ``image_embeddings``) each prompt belongs to.
        boxes: None (the paper's prompting), or (N, 4) float (x0, y0, x1, y1) pixels of the SAM input frame: each
            prompt then also carries that box through SAM's own prompt encoder (two more sparse tokens, after the
            [SEG] token; :mod:`gsva.modeling.object_pointer`).

    Returns:
        (N, 1, 4h, 4w) mask logits (not probabilities), in prompt order, dtype of ``image_embeddings``. The mask
        decoder is called once per image with all of that image's prompts batched.
    """
    n, c = prompts.shape
    h, w = image_embeddings.shape[-2:]
    dtype = image_embeddings.dtype
    if image_index.shape != (n,):
        raise ValueError(f"image_index must be ({n},), got {tuple(image_index.shape)}")
    sparse = prompts.to(dtype).unsqueeze(1)
    if boxes is not None:
        if boxes.shape != (n, 4):
            raise ValueError(f"boxes must be ({n}, 4), got {tuple(boxes.shape)}")
        _keep_pe_fp32(sam)
        with torch.autocast(image_embeddings.device.type, enabled=False):
            box_tokens, _ = sam.prompt_encoder(points=None, boxes=boxes.float(), masks=None)  # (N, 2, C)
        sparse = torch.cat([sparse, box_tokens.to(dtype)], dim=1)
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(dtype).expand(n, c, h, w)
    return _decode_per_image(sam, image_embeddings, sparse, dense, image_index)


def decode_point_masks(sam: nn.Module, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                       image_index: torch.Tensor) -> torch.Tensor:
    """Low-resolution mask logits for one positive point prompt each, through SAM's own prompt encoder.

    SAM's interactive training signal (Kirillov et al., 2023, section 3), with a single positive click: the auxiliary
    objective of models whose SAM trains from scratch (``LossConfig.point_prompt_weight``) and stage (c) of
    ``gsva-smol`` (:mod:`gsva.sam_pretrain`).

    Args:
        image_embeddings: (B, C, h, w). point_coords: (N, 2) float (x, y) in pixels of the SAM input frame
            (after the longest-side resize, before padding). image_index: (N,) int64 row of each point's image.

    Returns:
        (N, 1, 4h, 4w) mask logits, in point order, dtype of ``image_embeddings``.
    """
    n = point_coords.shape[0]
    if point_coords.shape != (n, 2) or image_index.shape != (n,):
        raise ValueError(f"point_coords must be (N, 2) and image_index (N,), got {tuple(point_coords.shape)} "
                         f"and {tuple(image_index.shape)}")
    labels = torch.ones((n, 1), dtype=torch.int64, device=point_coords.device)
    return _decode_prompted(sam, image_embeddings, image_index, points=(point_coords.float()[:, None, :], labels))


def decode_box_masks(sam: nn.Module, image_embeddings: torch.Tensor, boxes: torch.Tensor,
                     image_index: torch.Tensor) -> torch.Tensor:
    """Low-resolution mask logits for one box prompt each, through SAM's own prompt encoder.

    Args:
        image_embeddings: (B, C, h, w). boxes: (N, 4) float (x0, y0, x1, y1) in pixels of the SAM input frame.
        image_index: (N,) int64 row of each box's image.

    Returns:
        (N, 1, 4h, 4w) mask logits, in box order, dtype of ``image_embeddings``.
    """
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or image_index.shape != (n,):
        raise ValueError(f"boxes must be (N, 4) and image_index (N,), got {tuple(boxes.shape)} "
                         f"and {tuple(image_index.shape)}")
    return _decode_prompted(sam, image_embeddings, image_index, boxes=boxes.float())


def _decode_prompted(sam: nn.Module, image_embeddings: torch.Tensor, image_index: torch.Tensor, points=None,
                     boxes=None) -> torch.Tensor:
    """SAM's prompt encoder (fp32) on points or boxes, then the mask decoder per image."""
    _keep_pe_fp32(sam)
    with torch.autocast(image_embeddings.device.type, enabled=False):
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    dtype = image_embeddings.dtype
    return _decode_per_image(sam, image_embeddings, sparse.to(dtype), dense.to(dtype), image_index)


def _keep_pe_fp32(sam: nn.Module) -> None:
    pe_layer = sam.prompt_encoder.pe_layer
    if pe_layer.positional_encoding_gaussian_matrix.dtype != torch.float32:
        # model.to(bf16) also casts this buffer, but SAM builds its coordinate grid in fp32: keep the PE in fp32
        pe_layer.positional_encoding_gaussian_matrix = pe_layer.positional_encoding_gaussian_matrix.float()


def _decode_per_image(sam: nn.Module, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                      image_index: torch.Tensor) -> torch.Tensor:
    """Run the mask decoder once per image on its prompts: sparse (N, k, C), dense (N, C, h, w) -> (N, 1, 4h, 4w)."""
    n = sparse.shape[0]
    h, w = image_embeddings.shape[-2:]
    out = image_embeddings.new_zeros((n, 1, 4 * h, 4 * w))
    if n == 0:
        return out
    _keep_pe_fp32(sam)
    image_pe = sam.prompt_encoder.get_dense_pe().to(image_embeddings.dtype)  # (1, C, h, w)
    for b in torch.unique(image_index).tolist():
        sel = (image_index == b).nonzero(as_tuple=True)[0]
        masks, _iou = sam.mask_decoder(
            image_embeddings=image_embeddings[b : b + 1], image_pe=image_pe,
            sparse_prompt_embeddings=sparse[sel], dense_prompt_embeddings=dense[sel], multimask_output=False,
        )
        out = out.index_put((sel,), masks.to(out.dtype))
    return out
