"""Datasets and the batch loader."""
import os
import pickle

import numpy as np
import pytest
import torch

from trp_ext.data import ImageDataset, ImageSplit, TensorLoader, load_cifar10, load_dataset, load_digits, \
    load_image_folder

SHARED_CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10_jpeg.npz")


def _write_cifar(folder, per_batch=6):
    folder = folder / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    return folder


def test_digits_is_built_in():
    data = load_digits()
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.uint8
    assert len(data.train.labels) + len(data.test.labels) == 1797
    assert set(data.test.labels.tolist()) == set(range(10))


def test_one_channel_batches_have_plain_nchw_strides():
    """Digits' images had stride 1 along their one channel (numpy's new axis), which convs read as
    channels_last: the first conv's weight got a channels_last gradient (strides 9, 1, 3, 1
    against the weight's 9, 9, 3, 1), and DDP warned in every distributed run."""
    data = load_digits()
    for split in (data.train, data.test):
        assert split.images.stride() == (64, 64, 8, 1)
    images, _ = next(iter(TensorLoader(data, "train", 16)))
    conv = torch.nn.Conv2d(1, 4, 3)
    conv(images).sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()


def test_cifar_standard_layout(tmp_path):
    folder = _write_cifar(tmp_path)
    for root in (tmp_path, folder):  # the parent, as torchvision's root=, or the folder itself
        data = load_cifar10(root)
        assert data.train.images.shape == (30, 3, 32, 32) and data.test.images.shape == (6, 3, 32, 32)
        assert data.classes[3] == "c3"


def test_cifar_missing_or_malformed_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    folder = _write_cifar(tmp_path / "x")
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(folder)
    os.remove(folder / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar10(folder)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for label, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 12), color).save(tmp_path / split / label / f"{i}.png")
    data = load_image_folder(tmp_path, size=16)
    assert data.classes == ["cat", "dog"] and data.train.images.shape == (4, 3, 16, 16)
    assert data.train.images[0, 0].float().mean() > 250 and data.train.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(FileNotFoundError, match="train/"):
        load_image_folder(tmp_path / "train")


def test_image_folder_file_that_is_not_an_image_is_named(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "0.png")
    (tmp_path / "train" / "cat" / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*notes\.jpg"):
        load_image_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.jpg").unlink()
    good = (tmp_path / "test" / "cat" / "0.png").read_bytes()
    (tmp_path / "test" / "cat" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"cannot read image .*1\.png"):
        load_image_folder(tmp_path)


def test_image_folder_reads_images_in_the_sub_folders_of_a_class(tmp_path):
    """Only a class folder's top level was read: a class kept in sub-folders (cat/indoor/*.png)
    lost those images silently, or raised 'holds no images' when it had no others."""
    from PIL import Image

    shades = {"cat": [(0, 0, 0), (10, 0, 0), (20, 0, 0)], "dog": [(0, 0, 200)]}
    for split in ("train", "test"):
        (tmp_path / split / "cat" / "indoor" / "night").mkdir(parents=True)
        (tmp_path / split / "dog" / ".cache").mkdir(parents=True)
        Image.new("RGB", (8, 8), shades["cat"][0]).save(tmp_path / split / "cat" / "a.png")
        Image.new("RGB", (8, 8), shades["cat"][1]).save(tmp_path / split / "cat" / "indoor" / "b.png")
        Image.new("RGB", (8, 8), shades["cat"][2]).save(tmp_path / split / "cat" / "indoor" / "night" / "c.png")
        Image.new("RGB", (8, 8), shades["dog"][0]).save(tmp_path / split / "dog" / "d.png")
        Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / split / "dog" / ".cache" / "e.png")  # hidden
    # A link back up the tree is followed once, not forever.
    os.symlink(tmp_path / "train" / "cat", tmp_path / "train" / "cat" / "indoor" / "loop")
    data = load_image_folder(tmp_path, size=8)
    assert data.train.labels.tolist() == [0, 0, 0, 1] and data.test.labels.tolist() == [0, 0, 0, 1]
    assert data.train.images[:, 0, 0, 0].tolist() == [0, 10, 20, 0]  # sorted: a, indoor/b, indoor/night/c
    assert data.train.images[3, 2, 0, 0] == 200  # the hidden folder's white image is not read


def test_cifar_meta_that_is_malformed_or_has_too_few_classes_is_named(tmp_path):
    folder = _write_cifar(tmp_path)
    (folder / "batches.meta").write_bytes(b"\x80\x04trunc")
    with pytest.raises(ValueError, match="malformed CIFAR-10 meta file .*batches.meta"):
        load_cifar10(folder)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [b"cat", b"dog"]}, handle)  # labels run to 9
    with pytest.raises(ValueError, match=r"labels \d\.\.9 do not fit the 2 classes of its batches.meta"):
        load_cifar10(folder)


def test_image_folder_skips_hidden_folders_and_refuses_classes_it_would_drop(tmp_path):
    """A hidden folder became class 0 (every label shifted, a dead output); a test class that
    train/ lacks, or an empty train class, left images out or an output dead, silently."""
    from PIL import Image

    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / label / "0.png")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    data = load_image_folder(tmp_path, size=8)
    assert data.classes == ["cat", "dog"] and data.train.labels.tolist() == [0, 1]
    (tmp_path / "test" / "Dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "Dog" / "1.png")
    with pytest.raises(ValueError, match="test/ has classes that train/ lacks: Dog"):
        load_image_folder(tmp_path, size=8)
    (tmp_path / "test" / "Dog" / "1.png").unlink()
    (tmp_path / "test" / "Dog").rmdir()
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(FileNotFoundError, match="class folder .*bird holds no images"):
        load_image_folder(tmp_path, size=8)


@pytest.mark.parametrize("split", ["Train", "val", "training"])
def test_loader_refuses_a_split_it_does_not_know(split):
    with pytest.raises(ValueError, match="argument 'split' must be 'train' or 'test'"):
        TensorLoader(load_digits(), split)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="argument 'data'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("cifar10")
    # digits is built in: a folder given with it would be ignored, and the run train on digits
    with pytest.raises(ValueError, match="argument 'data_dir'.*'digits' is built in"):
        load_dataset("digits", tmp_path)


def _toy(n=10, augment=True):
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.float32).remainder(251).to(torch.uint8).reshape(n, 3, 4, 4)
    split = ImageSplit(images, torch.arange(n))
    return ImageDataset("toy", split, split, list(range(n)), (0.0, 0.0, 0.0), (1 / 255,) * 3, augment)


def test_loader_is_deterministic_per_epoch_and_covers_everything():
    loader = TensorLoader(_toy(), batch_size=3, seed=5)
    first = [labels.tolist() for _, labels in loader]
    again = [labels.tolist() for _, labels in loader]
    loader.set_epoch(1)
    other = [labels.tolist() for _, labels in loader]
    assert first == again and first != other
    assert sorted(sum(first, [])) == list(range(10)) and len(loader) == 4


def test_augmentation_is_a_padded_crop_with_flip():
    data = _toy(augment=True)
    for images, labels in TensorLoader(data, batch_size=10, seed=1):
        padded = torch.nn.functional.pad(data.train.images[labels].float(), (4, 4, 4, 4))
        for image, source in zip(images, padded):
            windows = [source[:, y:y + 4, x:x + 4] for y in range(9) for x in range(9)]
            assert any(torch.equal(image, w) or torch.equal(image, w.flip(-1)) for w in windows)


def test_test_split_is_not_augmented_or_shuffled():
    data = _toy()
    images, labels = next(iter(TensorLoader(data, "test", batch_size=10)))
    assert labels.tolist() == list(range(10)) and torch.equal(images, data.test.images.float())


def test_sharded_loader_splits_disjointly():
    data = _toy(n=11)
    shards = [sum((l.tolist() for _, l in TensorLoader(data, batch_size=2, shard=(r, 2))), []) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])


@pytest.mark.skipif(not os.path.exists(SHARED_CIFAR), reason="shared CIFAR-10 copy not present")
def test_shared_cifar10_copy_is_readable():
    archive = np.load(SHARED_CIFAR)
    assert archive["train_offsets"].shape == (50001,) and archive["test_labels"].shape == (10000,)
