import pytest
import torch

from cnnsweep.errors import UserError
from cnnsweep.train.augment import NoAugmentation, RandomAffine, RandomCropFlip, RandomRotation, affine, rotate


def digits(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotation_turns_each_image_as_torchvision_does_by_its_drawn_angle(interpolation):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tf

    images = digits()
    out = RandomRotation(7.0, interpolation)(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not torch.equal(out, images)
    # the angles, drawn as documented: uniform in [-7, +7] degrees, one per image, from the generator
    angles = (torch.rand(len(images), generator=torch.Generator().manual_seed(1)) * 2 - 1) * 7.0
    mode = InterpolationMode(interpolation)
    theirs = torch.stack([tf.rotate(image, float(angle), mode) for image, angle in zip(images, angles, strict=True)])
    assert torch.allclose(out, theirs, atol=1e-5)  # nearest: equal; bilinear: within float rounding


def test_angle_zero_is_the_identity():
    images = digits()
    zero = torch.zeros(len(images))
    assert torch.equal(rotate(images, zero, "nearest"), images)
    assert torch.allclose(rotate(images, zero, "bilinear"), images, atol=1e-5)
    assert torch.equal(RandomRotation(0.0, "nearest")(images, torch.Generator().manual_seed(0)), images)


def test_quarter_turn_moves_pixels_as_a_rotation_and_fills_with_zero():
    images = digits(2)
    turned = rotate(images, torch.full((2,), 90.0), "nearest")
    # a quarter turn of a square image moves every pixel to another pixel centre; positive angles turn
    # counter-clockwise, as torchvision's rotate
    assert torch.equal(turned, torch.rot90(images, k=1, dims=(2, 3)))
    corner_fill = rotate(torch.ones(1, 1, 28, 28), torch.tensor([45.0]), "nearest")
    assert corner_fill[0, 0, 0, 0] == 0 and corner_fill[0, 0, 14, 14] == 1


def test_each_image_gets_its_own_angle_and_draws_are_seeded():
    image = digits(1).repeat(16, 1, 1, 1)
    first = RandomRotation(7.0, "nearest")(image, torch.Generator().manual_seed(3))
    again = RandomRotation(7.0, "nearest")(image, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    distinct = {tuple(first[i].flatten().tolist()) for i in range(16)}
    assert len(distinct) > 8


def test_no_augmentation_returns_images_unchanged():
    images = digits()
    assert NoAugmentation()(images, torch.Generator()) is images


def test_bad_settings_are_refused():
    with pytest.raises(UserError, match="interpolation='bicubic'"):
        RandomRotation(7.0, "bicubic")
    with pytest.raises(UserError, match="degrees=-1"):
        RandomRotation(-1.0, "nearest")


def test_affine_shifts_and_zooms_about_the_centre():
    dot = torch.zeros(1, 1, 28, 28)
    dot[0, 0, 14, 14] = 1.0
    none, one = torch.zeros(1), torch.ones(1)
    moved = affine(dot, none, one, torch.tensor([[2 / 28, -3 / 28]]), "nearest")  # 2 px right, 3 px up
    assert moved.nonzero().tolist() == [[0, 0, 11, 16]]
    square = torch.zeros(1, 1, 28, 28)
    square[0, 0, 12:16, 12:16] = 1.0
    zoomed = affine(square, none, torch.full((1,), 2.0), torch.zeros(1, 2), "nearest")
    assert zoomed.sum() == 4 * square.sum()  # twice the size on each side, same centre
    assert zoomed[0, 0, 10:18, 10:18].sum() == zoomed.sum()


def test_random_affine_without_shift_and_zoom_is_the_rotation():
    images = digits()
    plain = RandomAffine(7.0, translate=0.0, scale=[1.0, 1.0], interpolation="nearest")(
        images, torch.Generator().manual_seed(4)
    )
    assert torch.equal(RandomAffine(0.0, 0.0, [1.0, 1.0], "nearest")(images, torch.Generator()), images)
    varied = RandomAffine(7.0, translate=0.1, scale=[0.9, 1.1], interpolation="nearest")(
        images, torch.Generator().manual_seed(4)
    )
    assert plain.shape == varied.shape and not torch.equal(plain, varied)
    # the draws, as documented: per image an angle in [-7, 7], a zoom in [0.9, 1.1], a shift of up to 0.1
    # of the image size on each axis
    draws = torch.rand(len(images), 4, generator=torch.Generator().manual_seed(4))
    angles = (draws[:, 0] * 2 - 1) * 7.0
    assert torch.equal(plain, rotate(images, angles, "nearest"))  # without shift and zoom: the rotation
    zooms, shifts = 0.9 + draws[:, 1] * 0.2, (draws[:, 2:] * 2 - 1) * 0.1
    # torchvision's affine (angles clockwise, shifts in pixels) makes the same images
    from torchvision.transforms import functional as tf

    theirs = [
        tf.affine(image, angle=-float(angle), translate=(shift * 28).tolist(), scale=float(zoom), shear=[0.0])
        for image, angle, zoom, shift in zip(images, angles, zooms, shifts, strict=True)
    ]
    assert torch.equal(varied, torch.stack(theirs))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"translate": 1.0}, "augmentation.translate=1.0 must lie in [0, 1)"),
        ({"scale": [1.1, 0.9]}, "augmentation.scale=[1.1, 0.9] must be [min, max]"),
        ({"scale": [0.0, 1.0]}, "augmentation.scale=[0.0, 1.0] must be [min, max]"),
        ({"degrees": -2.0}, "augmentation.degrees=-2.0 must be >= 0"),
    ],
)
def test_bad_affine_settings_are_refused(settings, message):
    with pytest.raises(UserError) as error:
        RandomAffine(**({"degrees": 7.0, "translate": 0.1, "scale": [0.9, 1.1], "interpolation": "nearest"} | settings))
    assert message in str(error.value)


def crop_flip_outcomes(image: torch.Tensor, padding: int) -> dict[tuple, torch.Tensor]:
    """Every image torchvision's RandomCrop(padding, fill=0) + RandomHorizontalFlip can make of `image`,
    by (top, left, mirrored), through torchvision's own functional ops."""
    from torchvision.transforms import functional as tf

    size = image.shape[-1]
    padded = tf.pad(image, [padding], fill=0)
    outcomes = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = tf.crop(padded, top, left, size, size)
            outcomes[(top, left, False)] = crop
            outcomes[(top, left, True)] = tf.hflip(crop)
    return outcomes


def outcome_counts(images: torch.Tensor, outcomes: dict[tuple, torch.Tensor]) -> dict[tuple, int]:
    lookup = {tuple(value.flatten().tolist()): key for key, value in outcomes.items()}
    counts = dict.fromkeys(outcomes, 0)
    for image in images:
        counts[lookup[tuple(image.flatten().tolist())]] += 1  # KeyError: an image torchvision cannot make
    return counts


def test_crop_flip_draws_the_same_distribution_as_torchvisions_per_image_transforms():
    from torchvision import transforms

    image = (torch.arange(3 * 10 * 10).view(3, 10, 10) + 1).float() / 300  # every pixel distinct and non-zero
    outcomes = crop_flip_outcomes(image, padding=2)
    assert len({tuple(v.flatten().tolist()) for v in outcomes.values()}) == 50  # 5 x 5 offsets x 2
    n = 5000
    ours = RandomCropFlip(padding=2, flip=True)(image.repeat(n, 1, 1, 1), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    per_image = transforms.Compose([transforms.RandomCrop(10, padding=2, fill=0), transforms.RandomHorizontalFlip()])
    theirs = torch.stack([per_image(image) for _ in range(n)])
    expected = n / 50
    for counts in (outcome_counts(ours, outcomes), outcome_counts(theirs, outcomes)):
        chi_square = sum((count - expected) ** 2 / expected for count in counts.values())
        assert chi_square < 86.7  # the 0.999 quantile of chi-square with 49 degrees of freedom
    mirrored = sum(count for (_, _, flip), count in outcome_counts(ours, outcomes).items() if flip)
    assert abs(mirrored / n - 0.5) < 0.03


def test_crop_flip_without_flip_never_mirrors_and_padding_zero_is_the_identity():
    image = (torch.arange(100).view(1, 10, 10) + 1).float() / 100
    outcomes = crop_flip_outcomes(image, padding=1)
    counts = outcome_counts(RandomCropFlip(1, flip=False)(image.repeat(400, 1, 1, 1), torch.Generator()), outcomes)
    assert sum(count for (_, _, flip), count in counts.items() if flip) == 0
    assert all(count > 0 for (_, _, flip), count in counts.items() if not flip)  # all 9 offsets drawn
    batch = digits()
    assert torch.equal(RandomCropFlip(0, flip=False)(batch, torch.Generator()), batch)
    both = RandomCropFlip(0, flip=True)(batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(b, a) or torch.equal(b, a.flip(2)) for a, b in zip(batch, both, strict=True))
    with pytest.raises(UserError, match="augmentation.padding=-1 must be >= 0"):
        RandomCropFlip(-1, flip=True)


def test_crop_flip_draws_are_seeded_per_image():
    batch = digits(1).repeat(32, 1, 1, 1)
    first = RandomCropFlip(2, True)(batch, torch.Generator().manual_seed(5))
    assert torch.equal(first, RandomCropFlip(2, True)(batch, torch.Generator().manual_seed(5)))
    assert len({tuple(image.flatten().tolist()) for image in first}) > 16
