import pytest
import torch

from cnnsweep.data import MNISTData, n_batches, ordered_batches, shuffled_batches
from cnnsweep.errors import UserError


def mnist(root, **changes) -> MNISTData:
    settings = dict(
        root=str(root),
        batch_size=128,
        eval_batch_size=1000,
        val_size=0,
        split_seed=0,
        train_limit=None,
        test_limit=None,
        mean=0.1307,
        std=0.3081,
        download=False,
    )
    return MNISTData(**(settings | changes))


def test_load_puts_uint8_images_and_labels_on_the_device(tiny_mnist):
    splits = mnist(tiny_mnist).load(torch.device("cpu"))
    assert splits.val is None
    assert splits.train.images.shape == (600, 1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert splits.train.labels.dtype == torch.int64 and len(splits.test) == 200
    assert set(splits.train.labels.tolist()) == set(range(10))


def test_validation_split_is_held_out_and_fixed_by_split_seed(tiny_mnist):
    full = mnist(tiny_mnist).load(torch.device("cpu")).train
    torch.manual_seed(123)  # the run's seed must not move the split
    first = mnist(tiny_mnist, val_size=100).load(torch.device("cpu"))
    torch.manual_seed(456)
    second = mnist(tiny_mnist, val_size=100).load(torch.device("cpu"))
    other = mnist(tiny_mnist, val_size=100, split_seed=1).load(torch.device("cpu"))
    assert len(first.val) == 100 and len(first.train) == 500
    assert torch.equal(first.val.images, second.val.images)
    assert not torch.equal(first.val.images, other.val.images)
    pool = {tuple(image.flatten().tolist()) for image in full.images}
    train = {tuple(image.flatten().tolist()) for image in first.train.images}
    val = {tuple(image.flatten().tolist()) for image in first.val.images}
    assert not train & val and train | val == pool


def test_limits_keep_the_first_images(tiny_mnist):
    full = mnist(tiny_mnist).load(torch.device("cpu"))
    limited = mnist(tiny_mnist, train_limit=50, test_limit=20).load(torch.device("cpu"))
    assert torch.equal(limited.train.images, full.train.images[:50])
    assert torch.equal(limited.test.labels, full.test.labels[:20])


def test_shuffled_batches_visit_every_image_once_in_a_seeded_order(tiny_mnist):
    train = mnist(tiny_mnist).load(torch.device("cpu")).train
    train.labels = torch.arange(len(train))  # label = index, to see which images came
    batches = list(shuffled_batches(train, 128, torch.Generator().manual_seed(0)))
    again = list(shuffled_batches(train, 128, torch.Generator().manual_seed(0)))
    seen = torch.cat([b.labels for b in batches])
    assert len(batches) == n_batches(600, 128) == 5 and len(batches[-1]) == 600 - 4 * 128
    assert sorted(seen.tolist()) == list(range(600)) and seen.tolist() != list(range(600))
    assert torch.equal(seen, torch.cat([b.labels for b in again]))
    assert torch.equal(torch.cat([b.labels for b in ordered_batches(train, 256)]), torch.arange(600))


def test_missing_files_give_one_clear_error(tmp_path):
    with pytest.raises(UserError) as error:
        mnist(tmp_path).load(torch.device("cpu"))
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "data.root=" in message and "MNIST_ROOT" in message and "\n" not in message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"val_size": 60_000}, "data.val_size=60000 leaves no training images out of 60000"),
        ({"val_size": 300, "train_limit": 300}, "data.val_size=300 leaves no training images out of 300"),
        ({"batch_size": 0}, "data.batch_size=0 must be a positive integer"),
        ({"val_size": -1}, "data.val_size=-1 must be >= 0"),
    ],
)
def test_bad_settings_are_refused_before_reading(tmp_path, changes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        mnist(tmp_path / "nowhere", **changes)


def copy_tiny(tiny_mnist, tmp_path):
    import shutil

    shutil.copytree(tiny_mnist / "MNIST", tmp_path / "MNIST")
    return tmp_path / "MNIST" / "raw"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-100], "is 470,316 bytes but its header promises 600 images (470,416 bytes)"),
        (lambda data: b"\x1f\x8b\x08\x00" + data[4:], "has magic number 0x1f8b0800, not 0x00000803"),
        (lambda data: data[:10], "is 10 bytes, too short for an IDX header"),
    ],
)
def test_truncated_or_wrong_magic_idx_files_are_named_with_the_problem(tiny_mnist, tmp_path, damage, message):
    raw = copy_tiny(tiny_mnist, tmp_path)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(UserError) as error:
        mnist(tmp_path).load(torch.device("cpu"))
    assert str(images) in str(error.value) and message in str(error.value)


def test_image_and_label_counts_must_agree(tiny_mnist, tmp_path):
    raw = copy_tiny(tiny_mnist, tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte"
    data = labels.read_bytes()
    labels.write_bytes(data[:4] + (150).to_bytes(4, "big") + data[8:158])
    with pytest.raises(UserError, match="holds 200 images but .* holds 150 labels"):
        mnist(tmp_path).load(torch.device("cpu"))
