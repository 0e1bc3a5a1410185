"""Batched augmentations: one call transforms a whole batch on its device, a random draw per image."""

from __future__ import annotations

import math
from collections.abc import Sequence

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

    def __init__(self, degrees: float, interpolation: str) -> None:
        _check_rotation(degrees, interpolation)
        self.degrees = degrees
        self.interpolation = interpolation

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        uniform = torch.rand(n, generator=generator, device=generator.device).to(images.device)
        return rotate(images, (uniform * 2 - 1) * self.degrees, self.interpolation)


class RandomAffine:
    """Rotate, scale and shift each image by its own draw: angle in [-degrees, +degrees], zoom
    factor in [scale[0], scale[1]], shift up to `translate` of the image size along each axis.

    Works like RandomRotation (float images in [0, 1], fill 0, nearest or bilinear); with
    translate=0 and scale=[1, 1] it is RandomRotation.
    """

    def __init__(self, degrees: float, translate: float, scale: Sequence[float], interpolation: str) -> None:
        _check_rotation(degrees, interpolation)
        if not 0 <= translate < 1:
            raise UserError(f"augmentation.translate={translate} must lie in [0, 1) (a fraction of the image size)")
        scale = list(scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise UserError(f"augmentation.scale={scale} must be [min, max] zoom factors with 0 < min <= max")
        self.degrees, self.translate, self.scale = degrees, translate, scale
        self.interpolation = interpolation

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        uniform = torch.rand(n, 4, generator=generator, device=generator.device).to(images.device)
        degrees = (uniform[:, 0] * 2 - 1) * self.degrees
        zoom = self.scale[0] + uniform[:, 1] * (self.scale[1] - self.scale[0])
        shift = (uniform[:, 2:] * 2 - 1) * self.translate
        return affine(images, degrees, zoom, shift, self.interpolation)


class RandomCropFlip:
    """Pad each image by `padding` pixels of 0 on every side, cut a random image-sized crop out of it
    (an offset per image), and mirror it left-right with probability 1/2 when `flip` is set.

    The batched form of torchvision's RandomCrop(size, padding, fill=0) followed by
    RandomHorizontalFlip(), on float images (B x C x H x W) with pixel values in [0, 1].
    """

    def __init__(self, padding: int, flip: bool) -> None:
        if padding < 0:
            raise UserError(f"augmentation.padding={padding} must be >= 0 (pixels added on each side)")
        self.padding, self.flip = padding, flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        draws = torch.rand(n, 3, generator=generator, device=generator.device).to(images.device)
        if self.padding:
            # offsets 0..2*padding in each axis, uniform, as RandomCrop's randint
            top, left = (draws[:, :2] * (2 * self.padding + 1)).long().clamp_(max=2 * self.padding).unbind(1)
            padded = F.pad(images, [self.padding] * 4)
            rows = (top.view(n, 1) + torch.arange(height, device=images.device)).view(n, 1, height, 1)
            cols = (left.view(n, 1) + torch.arange(width, device=images.device)).view(n, 1, 1, width)
            index = torch.arange(n, device=images.device).view(n, 1, 1, 1)
            channel = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
            images = padded[index, channel, rows, cols]
        if self.flip:
            mirrored = draws[:, 2].view(n, 1, 1, 1) < 0.5
            images = torch.where(mirrored, images.flip(3), images)
        return images


class NoAugmentation:
    """Leaves images as they are."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images


def rotate(images: torch.Tensor, degrees: torch.Tensor, interpolation: str = "nearest") -> torch.Tensor:
    """Rotate image i of the batch by degrees[i] about its centre, filling with 0."""
    n = images.shape[0]
    no_shift = torch.zeros(n, 2, dtype=images.dtype, device=images.device)
    return affine(images, degrees, torch.ones(n, dtype=images.dtype, device=images.device), no_shift, interpolation)


def affine(
    images: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, interpolation: str
) -> torch.Tensor:
    """Rotate image i by degrees[i], scale it by zoom[i] about its centre, then move it by shift[i]
    (x, y as fractions of the image size); pixels from outside the image are 0."""
    radians = degrees.to(images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    # affine_grid maps each output pixel back to where it is read from in the input: the inverse of
    # "rotate, zoom, shift", in coordinates where the image spans [-1, 1] (a shift f is 2f there).
    inverse = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1) / zoom.view(-1, 1, 1)
    offset = -(inverse @ (2 * shift.to(images.dtype)).unsqueeze(2))
    theta = torch.cat([inverse, offset], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=interpolation, padding_mode="zeros", align_corners=False)


def _check_rotation(degrees: float, interpolation: str) -> None:
    if degrees < 0:
        raise UserError(f"augmentation.degrees={degrees} must be >= 0")
    if interpolation not in INTERPOLATIONS:
        raise UserError(
            f"augmentation.interpolation={interpolation!r} is unknown; allowed: {', '.join(INTERPOLATIONS)}"
        )
