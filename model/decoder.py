"""Prompt -> mask on precomputed embeddings, one prompt per image.

Stock segment-anything `MaskDecoder.predict_masks` repeats every image embedding once per prompt in the batch, so a
batch of B images with one box each costs B^2 decoder passes. `decode` runs the same layers with the i-th prompt
paired with the i-th image only.
"""
from __future__ import annotations

import torch
from torch import nn


def encode_prompts(prompt_encoder: nn.Module, boxes: torch.Tensor | None = None,
                   points: tuple[torch.Tensor, torch.Tensor] | None = None,
                   masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B x 4, model pixels), points ((B x N x 2, B x N labels 1/0/-1)) and/or mask logits -> prompt tokens."""
    return prompt_encoder(points=points, boxes=boxes, masks=masks)


def decode(mask_decoder: nn.Module, prompt_encoder: nn.Module, embeddings: torch.Tensor,
           boxes: torch.Tensor | None = None, points: tuple[torch.Tensor, torch.Tensor] | None = None,
           mask_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """B embeddings + B prompts -> (B x 1 x 4s x 4s mask logits, B IoU predictions), single-mask output."""
    device = embeddings.device  # prompts are made on the CPU (numpy boxes, clicks): move them to the model
    boxes = None if boxes is None else boxes.to(device)
    points = None if points is None else (points[0].to(device), points[1].to(device))
    mask_inputs = None if mask_inputs is None else mask_inputs.to(device)
    sparse, dense = encode_prompts(prompt_encoder, boxes=boxes, points=points, masks=mask_inputs)
    batch = embeddings.shape[0]
    tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
    src = embeddings + dense
    image_pe = prompt_encoder.get_dense_pe().expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = mask_decoder.transformer(src, image_pe, tokens)
    iou_token_out = hs[:, 0, :]
    mask_token_out = hs[:, 1, :]  # token 0 of the mask tokens: SAM's single-mask output
    upscaled = mask_decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = mask_decoder.output_hypernetworks_mlps[0](mask_token_out)
    b, c, h, w = upscaled.shape
    logits = (hyper.unsqueeze(1) @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)
    iou = mask_decoder.iou_prediction_head(iou_token_out)[:, :1]
    return logits, iou
