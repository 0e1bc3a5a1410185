import pickle
import shutil

import pytest
import torch

from cnnsweep.cli import check_config
from cnnsweep.errors import UserError, make
from cnnsweep.train.data import ImageFolderData, MNISTData, channel_stats, n_batches, ordered_batches, shuffled_batches

from helpers import compose_train, write_cifar10, write_image_folder


def mnist(root, **changes) -> MNISTData:
    settings = dict(
        root=str(root),
        batch_size=128,
        eval_batch_size=1000,
        val_size=0,
        split_seed=0,
        train_limit=None,
        test_limit=None,
        in_channels=1,
        image_size=28,
        num_classes=10,
        mean=[0.1307],
        std=[0.3081],
        download=False,
        dataset="MNIST",
    )
    return MNISTData(**(settings | changes))


def data_option(option: str, root, *overrides: str):
    """The data object `python train.py data=<option> data.root=<root> ...` builds."""
    return make(compose_train([f"data={option}", f"data.root={root}", "data.download=false", *overrides]).data)


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


def test_kmnist_reads_its_own_folder_through_torchvision(tiny_kmnist, tiny_mnist):
    splits = data_option("kmnist", tiny_kmnist).load(torch.device("cpu"))
    assert splits.train.images.shape == (300, 1, 28, 28) and len(splits.test) == 100
    with pytest.raises(UserError, match=r"KMNIST could not be read from .*/KMNIST/raw"):
        data_option("kmnist", tiny_mnist).load(torch.device("cpu"))  # MNIST files are not KMNIST's


def test_cifar10_reads_generated_batches_without_md5_and_refuses_them_with_it(tiny_cifar10):
    splits = data_option("cifar10", tiny_cifar10, "data.check_md5=false", "data.val_size=20").load(torch.device("cpu"))
    assert splits.train.images.shape == (180, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert len(splits.val) == 20 and len(splits.test) == 40
    first = pickle.loads((tiny_cifar10 / "cifar-10-batches-py" / "test_batch").read_bytes())
    # rows of 3072 bytes are the R, G and B planes: the tensor is N x C x H x W in that order
    assert torch.equal(splits.test.images[0].flatten(), torch.from_numpy(first["data"][0]))
    assert splits.test.labels.tolist() == first["labels"]
    with pytest.raises(UserError) as error:  # the official release's MD5 sums are checked by default
        data_option("cifar10", tiny_cifar10).load(torch.device("cpu"))
    message = str(error.value)
    assert "differ from the official release's MD5 sums" in message and "data.check_md5=false" in message
    assert "\n" not in message


def test_damaged_cifar10_batches_are_named(tiny_cifar10, tmp_path):
    root = write_cifar10(tmp_path, n=4, seed=0)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(UserError, match=r"CIFAR-10 files in .*cifar-10-batches-py are damaged"):
        data_option("cifar10", root, "data.check_md5=false").load(torch.device("cpu"))
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match="its files are missing"):
        data_option("cifar10", root, "data.check_md5=false").load(torch.device("cpu"))


def test_image_folder_reads_train_and_test_folders_resized_to_image_size(tiny_image_folder):
    data = data_option("image_folder", tiny_image_folder, "data.image_size=20")
    splits = data.load(torch.device("cpu"))
    assert splits.train.images.shape == (90, 3, 20, 20) and splits.test.images.shape == (30, 3, 20, 20)
    assert splits.train.labels.bincount().tolist() == [30, 30, 30]  # blue, green, red: sorted folder names
    red = splits.train.images[splits.train.labels == 2].float().mean((0, 2, 3))
    assert red[0] > red[1] + 100 and red[0] > red[2] + 100
    # mean and std null: computed per channel from the training images at load
    pixels = splits.train.images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert data.mean == pytest.approx(pixels.mean(1).tolist(), rel=1e-9)
    assert data.std == pytest.approx(pixels.std(1).tolist(), rel=1e-9)
    grey = data_option("image_folder", tiny_image_folder, "data.num_classes=3", "data.in_channels=1").load(
        torch.device("cpu")
    )
    assert grey.train.images.shape == (90, 1, 32, 32)


def test_image_folder_without_train_and_test_is_split_by_a_seeded_fraction(tmp_path):
    write_image_folder(tmp_path, 20, ("a", "b"), seed=3)
    first = data_option("image_folder", tmp_path, "data.test_fraction=0.25").load(torch.device("cpu"))
    again = data_option("image_folder", tmp_path, "data.test_fraction=0.25").load(torch.device("cpu"))
    other = data_option("image_folder", tmp_path, "data.test_fraction=0.25", "data.split_seed=1").load(
        torch.device("cpu")
    )
    assert (len(first.train), len(first.test)) == (30, 10)
    assert torch.equal(first.test.images, again.test.images) and not torch.equal(first.test.images, other.test.images)
    train = {tuple(image.flatten().tolist()) for image in first.train.images}
    assert not train & {tuple(image.flatten().tolist()) for image in first.test.images}


def test_an_image_folder_says_how_many_classes_it_has_and_the_network_follows(tiny_image_folder, tmp_path):
    cfg = compose_train(["data=image_folder", f"data.root={tiny_image_folder}"])
    assert (cfg.data.num_classes, cfg.data.in_channels, cfg.data.image_size) == (3, 3, 32)  # train/'s folders
    assert make(cfg.model, _convert_="all")(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    write_image_folder(tmp_path / "flat", 2, ("a", "b", "c", "d"), seed=4)  # class folders directly in root
    flat = compose_train(["data=image_folder", f"data.root={tmp_path / 'flat'}", "data.in_channels=1"])
    assert flat.model.num_classes == 4 and flat.model.in_channels == 1
    assert (
        compose_train(["data=image_folder", f"data.root={tiny_image_folder}", "data.num_classes=5"]).model.num_classes
        == 5
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no sub-folders; it needs one sub-folder of images per class"):
        check_config(compose_train(["data=image_folder", f"data.root={tmp_path / 'empty'}"]))


def test_image_folder_mistakes_are_one_line_errors(tiny_image_folder, tmp_path):
    with pytest.raises(UserError, match=r"has 3 class folders \(blue, green, red\) but data.num_classes=10"):
        data_option("image_folder", tiny_image_folder, "data.num_classes=10").load(torch.device("cpu"))
    with pytest.raises(UserError, match="is not a folder"):
        data_option("image_folder", tmp_path / "nowhere", "data.num_classes=3").load(torch.device("cpu"))
    shutil.copytree(tiny_image_folder / "train", tmp_path / "half" / "train")
    with pytest.raises(UserError, match=r"has train/ but no test/; add test/ with the same class folders"):
        data_option("image_folder", tmp_path / "half", "data.num_classes=3").load(torch.device("cpu"))
    shutil.copytree(tiny_image_folder, tmp_path / "copy")
    (tmp_path / "copy" / "train" / "red" / "5.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"red/5.png cannot be read as an image"):
        data_option("image_folder", tmp_path / "copy", "data.num_classes=3").load(torch.device("cpu"))


def test_data_that_would_not_fit_is_refused_before_reading(tiny_image_folder, tiny_mnist, monkeypatch):
    # 120 images of 3 x 1,000,000 x 1,000,000 bytes: 360 TB, twice that while read; past any machine
    data = data_option("image_folder", tiny_image_folder, "data.num_classes=3", "data.image_size=1000000")
    monkeypatch.setattr(ImageFolderData, "_read", lambda *_: pytest.fail("read before the memory check"))
    with pytest.raises(UserError) as error:
        data.load(torch.device("cpu"))
    message = str(error.value)
    assert message.startswith(f"image folder {tiny_image_folder} would need 720.0 TB (120 images of 3x1000000x1000000")
    assert "this machine's free memory is" in message and "\n" not in message
    monkeypatch.setattr("cnnsweep.train.data.available_bytes", lambda device: 1_000_000)
    with pytest.raises(
        UserError, match=r"MNIST would need 1.3 MB \(800 images of 1x28x28 as uint8\) but this .* is 1.0 MB"
    ):
        mnist(tiny_mnist).load(torch.device("cpu"))


def test_every_data_option_states_its_shape_and_a_normalisation_per_channel():
    expected = {
        "mnist": (1, 28, 10),
        "fashion_mnist": (1, 28, 10),
        "kmnist": (1, 28, 10),
        "cifar10": (3, 32, 10),
        "image_folder": (3, 32, None),
    }
    for option, (channels, size, classes) in expected.items():
        data = compose_train([f"data={option}"]).data
        assert (data.in_channels, data.image_size) == (channels, size)
        if classes is not None:
            assert data.num_classes == classes
            assert len(data.mean) == len(data.std) == channels


def test_channel_stats_summed_in_chunks_equal_the_whole_tensors_figures():
    images = torch.randint(0, 256, (1000, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(images, chunk=300)
    pixels = images.transpose(0, 1).reshape(3, -1).double() / 255
    assert mean == pytest.approx(pixels.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std(1).tolist(), abs=1e-12)


def test_labels_beyond_num_classes_are_refused(tiny_cifar10):
    data = data_option("cifar10", tiny_cifar10, "data.check_md5=false", "data.num_classes=5")
    with pytest.raises(UserError, match=r"training labels run from 0 to 9 but data.num_classes=5; set data.num_cl"):
        data.load(torch.device("cpu"))


def test_data_sets_of_one_shape_refuse_another_and_normalise_per_channel(tmp_path):
    with pytest.raises(UserError, match="KMNIST images are 1x28x28, not data.in_channels=1, data.image_size=32"):
        data_option("kmnist", tmp_path, "data.image_size=32")
    with pytest.raises(UserError, match="CIFAR-10 images are 3x32x32, not data.in_channels=3, data.image_size=28"):
        data_option("cifar10", tmp_path, "data.image_size=28")
    data = data_option("cifar10", tmp_path)
    images = torch.rand(4, 3, 32, 32)
    expected = (images - torch.tensor(data.mean).view(1, 3, 1, 1)) / torch.tensor(data.std).view(1, 3, 1, 1)
    assert torch.allclose(data.normalize(images), expected) and torch.allclose(data.normalize(images), expected)
