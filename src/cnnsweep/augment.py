"""Batched augmentations: one call transforms a whole batch on its device, a random draw per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnsweep.errors import UserError

INTERPOLATIONS = ("nearest", "bilinear")


class RandomRotation:
    """Rotate each image by its own angle drawn uniformly from [-degrees, +degrees].

    Works on float images (B x C x H x W) with pixel values in [0, 1]; corners that come from
    outside the image are filled with 0 (black), as torchvision's RandomRotation(fill=0).
    `interpolation` is "nearest" (torchvision's default) or "bilinear".
    """

    def __init__(self, degrees: float, interpolation: str = "nearest") -> None:
        if degrees < 0:
            raise UserError(f"augmentation.degrees={degrees} must be >= 0")
        if interpolation not in INTERPOLATIONS:
            raise UserError(
                f"augmentation.interpolation={interpolation!r} is unknown; allowed: {', '.join(INTERPOLATIONS)}"
            )
        self.degrees = degrees
        self.interpolation = interpolation

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        uniform = torch.rand(n, generator=generator, device=generator.device).to(images.device)
        return rotate(images, (uniform * 2 - 1) * self.degrees, self.interpolation)


class NoAugmentation:
    """Leaves images as they are."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images


def rotate(images: torch.Tensor, degrees: torch.Tensor, interpolation: str = "nearest") -> torch.Tensor:
    """Rotate image i of the batch by degrees[i] about its centre, filling with 0."""
    radians = degrees.to(images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
