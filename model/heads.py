"""The two trainable modules ADA-SAM adds on top of the (cached) SAM image embedding."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SharedAdapter(nn.Module):
    """A residual conv block between the frozen encoder output and both heads: the gradient-feedback path.

    The mask decoder and the classifier both read its output, so segmentation losses reshape the features the
    classifier (and therefore its CAMs, and the next prompts) is built on. It sits after the encoder so that it
    trains on cached embeddings on a CPU. The last layer starts at zero: an untrained adapter is the identity and
    the pretrained decoder behaves exactly as shipped.
    """

    def __init__(self, dim: int = 256, hidden: int = 64) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.GroupNorm(8, hidden), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding + self.block(embedding)


class PresenceHead(nn.Module):
    """The presence decision's own adapter and classifier, beside the ones whose map prompts SAM.

    Training keeps the checkpoint whose automatic prompts score best on val, which is often early, before the
    classifier has learned to tell images apart (BUSI with every mask: val presence AUC 0.78-0.85 there, 0.87-0.93
    in the run's last weights). A model carries this head when training gave it the last weights for presence
    (model.train.Trainer.keep_presence_head); it never trains."""

    def __init__(self, dim: int = 256, adapter_hidden: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        self.adapter = SharedAdapter(dim, adapter_hidden)
        self.classifier = LocationClassifier(dim, dropout=dropout)
        self.requires_grad_(False)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each location of a B x C x h x w map (one fused op, unlike SAM's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LocationClassifier(nn.Module):
    """Target present / absent at every embedding location; the image's presence logit is their smooth maximum.

    Its map is its own output, as in the original CAM (Zhou et al. 2016) rather than a Grad-CAM of a pooled MLP:
    masks supervise every location where they exist, tags supervise the pooled logit everywhere (a target-free image
    must be target-free at every location; one with the target at some location). Dilated convolutions give each
    location context well beyond its 4x4 pixels; pyramid pooling (PSPNet, Zhao et al. 2017) adds the whole image's
    summary at 1x1, 2x2 and 4x4, and two position channels (height, distance from the vertical midline: mirror
    symmetric, as training mirrors images) say where the location is. Together they tell the target from a
    look-alike elsewhere in the image: on BUSI val at 10% masks they cut whole misses (lesion Dice < 0.3) from 13-18%
    to 7-10% (benchmarks/README.md). Normalisation is per location (across channels), never across the image, so a
    target-free image is not stretched until its most target-like patch looks like a target.
    Returns B x 2 logits (absent, present) like a two-class head: column 0 is a constant 0, so softmax(.)[:, 1] =
    sigmoid(present logit).
    """

    POOL_SHARPNESS = 4.0  # log-sum-exp pooling: 0 would be the mean of the locations, infinity their maximum
    PYRAMID = (1, 2, 4)  # grid sizes the image is summarised at for every location

    def __init__(self, dim: int = 256, hidden: int = 32, dropout: float = 0.3, dilations: tuple = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(dim + 2, hidden, 1), ChannelNorm(hidden), nn.GELU())
        self.context = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d), ChannelNorm(hidden), nn.GELU())
            for d in dilations)
        self.pyramid = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden, hidden, 1), ChannelNorm(hidden), nn.GELU(), nn.Conv2d(hidden, hidden, 1))
            for _ in self.PYRAMID)
        for block in self.pyramid:  # starts silent: the image summary joins in as far as the labels call for it
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)
        self.dropout = nn.Dropout2d(dropout)
        self.out = nn.Conv2d(hidden, 1, 1)

    def location_logits(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x h x w features -> B x h x w logits of "the target is here"."""
        x = self.reduce[1:](self._reduce_conv(features))
        for block in self.context:
            x = x + block(x)
        for size, block in zip(self.PYRAMID, self.pyramid):
            summary = block(F.adaptive_avg_pool2d(x, size))
            x = x + F.interpolate(summary, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.dropout(x))[:, 0]

    def _reduce_conv(self, features: torch.Tensor) -> torch.Tensor:
        """The first 1x1 convolution over [features, position channels], without building that concatenation: its
        position part is the same for every image of the batch, so it is computed once (copying the concatenated
        B x 258 x 64 x 64 tensor took a fifth of automatic prediction's PyTorch time)."""
        conv = self.reduce[0]
        dim = conv.in_channels - 2
        position = F.conv2d(position_channels(features[:1]), conv.weight[:, dim:], conv.bias)
        return F.conv2d(features, conv.weight[:, :dim]) + position

    def pool(self, location_logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """B x h x w location logits -> B x 2 image logits (smooth maximum over the valid, unpadded locations)."""
        r = self.POOL_SHARPNESS
        flat = location_logits.flatten(1) * r
        if valid is None:
            pooled = torch.logsumexp(flat, 1) - math.log(flat.shape[1])
        else:
            keep = valid.to(flat.device).flatten(1) > 0
            pooled = torch.logsumexp(flat.masked_fill(~keep, -math.inf), 1) - keep.sum(1).clamp_min(1).log()
        return torch.stack([torch.zeros_like(pooled), pooled / r], dim=1)

    def forward(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.location_logits(features), valid)


def position_channels(features: torch.Tensor) -> torch.Tensor:
    """B x 2 x h x w: height from -1 (top) to 1, and distance from the vertical midline, 0 to 1."""
    b, _, h, w = features.shape
    ys = torch.linspace(-1, 1, h, device=features.device, dtype=features.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=features.device, dtype=features.dtype).abs().view(1, 1, 1, w)
    return torch.cat([ys, xs.expand(b, 1, h, w)], 1)
