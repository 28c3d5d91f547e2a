"""Datasets: CIFAR-10 (standard ``cifar-10-batches-py`` folder), any image folder, and the built-in
default, scikit-learn's digits (1,797 real 8x8 handwritten digits shipped inside scikit-learn).

Each dataset is held in memory as uint8 images (N, C, H, W) plus int64 labels, and served by
:class:`TensorLoader`, which augments whole batches with tensor ops, on the CPU or, with the
data moved there, on the GPU.
"""
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_LAYOUT = ("expected the standard CIFAR-10 python layout: <dir>/cifar-10-batches-py/ (or <dir> itself) "
                "holding data_batch_1 ... data_batch_5 and test_batch, as torchvision downloads it")
IMAGE_FOLDER_LAYOUT = ("expected <dir>/train/<class>/*.png|jpg and <dir>/test/<class>/*.png|jpg "
                       "(one sub-folder per class; images in its own sub-folders count too)")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self):
        # Plain NCHW strides, the channel dim's included: one-channel images built with numpy's
        # new axis had stride 1 there, which convs read as channels_last, so the first conv's
        # weight got a channels_last gradient and DDP warned at every run ("Grad strides do not
        # match bucket view strides").
        plain = torch.empty(self.images.shape, dtype=self.images.dtype, device="meta").stride()
        if self.images.stride() != plain:
            self.images = self.images.clone(memory_format=torch.contiguous_format)


@dataclass
class ImageDataset:
    name: str
    train: ImageSplit
    test: ImageSplit
    classes: list
    mean: tuple
    std: tuple
    augment: bool  # random crop (pad 4) + horizontal flip while training

    @property
    def in_channels(self):
        return self.train.images.shape[1]

    @property
    def image_size(self):
        return tuple(self.train.images.shape[2:])


# ---------------------------------------------------------------------------- CIFAR-10
def _cifar_folder(root):
    root = os.fspath(root)
    for candidate in (os.path.join(root, "cifar-10-batches-py"), root):
        if os.path.isfile(os.path.join(candidate, "test_batch")):
            return candidate
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CIFAR-10 data directory not found: {root} ({CIFAR_LAYOUT})")
    raise FileNotFoundError(f"no CIFAR-10 batches in {root} ({CIFAR_LAYOUT})")


def _read_cifar_batch(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing CIFAR-10 batch file {path} ({CIFAR_LAYOUT})")
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as error:  # noqa: BLE001 - any parse failure is a malformed file
        raise ValueError(f"malformed CIFAR-10 batch file {path}: {type(error).__name__}: {error} "
                         f"({CIFAR_LAYOUT})") from None
    if len(data) != len(labels):
        raise ValueError(f"malformed CIFAR-10 batch file {path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar10(root):
    """CIFAR-10 from a standard ``cifar-10-batches-py`` folder (the pickled batches are trusted data
    files in the format torchvision downloads)."""
    folder = _cifar_folder(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)} ({CIFAR_LAYOUT})")
    parts = [_read_cifar_batch(os.path.join(folder, f"data_batch_{i}")) for i in range(1, 6)]
    test = _read_cifar_batch(os.path.join(folder, "test_batch"))
    classes = [f"class_{i}" for i in range(10)]
    meta = os.path.join(folder, "batches.meta")
    if os.path.isfile(meta):
        try:
            with open(meta, "rb") as handle:
                classes = [c.decode() if isinstance(c, bytes) else str(c)
                           for c in pickle.load(handle, encoding="bytes").get(b"label_names", classes)]
        except Exception as error:  # noqa: BLE001 - any parse failure is a malformed file
            raise ValueError(f"malformed CIFAR-10 meta file {meta}: {type(error).__name__}: {error} "
                             f"({CIFAR_LAYOUT})") from None
    # The class count sizes the model's output: labels past it would fail deep inside training.
    for split_labels in [p[1] for p in parts] + [test[1]]:
        if len(split_labels) and not (split_labels.min() >= 0 and split_labels.max() < len(classes)):
            raise ValueError(f"CIFAR-10 folder {folder}: labels {int(split_labels.min())}..{int(split_labels.max())} "
                             f"do not fit the {len(classes)} classes of its batches.meta ({CIFAR_LAYOUT})")
    train = ImageSplit(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                       torch.from_numpy(np.concatenate([p[1] for p in parts])))
    return ImageDataset("cifar10", train, ImageSplit(torch.from_numpy(test[0]), torch.from_numpy(test[1])),
                        classes, CIFAR_MEAN, CIFAR_STD, augment=True)


# ---------------------------------------------------------------------------- image folder
def _read_image(path, size):
    """One image file as uint8 (3, size, size); a file PIL cannot decode names itself."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        # PIL's UnidentifiedImageError (an OSError) for a non-image, OSError for a truncated one
        raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error} "
                         f"({IMAGE_FOLDER_LAYOUT})") from None


def _image_files(class_dir):
    """The images of one class, in sub-folders at any depth too (as torchvision's ImageFolder
    reads them; reading only the top level dropped the images of a class kept in sub-folders,
    silently), in sorted order. Hidden sub-folders are skipped, and a folder reached twice
    through symbolic links is read once (a link cycle would never end)."""
    seen = set()
    for folder, subfolders, files in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for file in sorted(files):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                yield os.path.join(folder, file)


def _read_image_split(folder, classes, size, every_class=False):
    """every_class: a class folder without images is an error (train/: it would be a dead output)."""
    images, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            continue
        count = len(images)
        for path in _image_files(class_dir):
            images.append(_read_image(path, size))
            labels.append(label)
        if every_class and len(images) == count:
            raise FileNotFoundError(f"class folder {class_dir} holds no images ({IMAGE_FOLDER_LAYOUT})")
    if not images:
        raise FileNotFoundError(f"no images under {folder} ({IMAGE_FOLDER_LAYOUT})")
    return ImageSplit(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long))


def load_image_folder(root, size=32):
    """A generic classification folder: ``root/train/<class>/...`` and ``root/test/<class>/...``,
    resized to ``size`` x ``size`` RGB."""
    root = os.fspath(root)
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if not os.path.isdir(train_dir) or not os.path.isdir(test_dir):
        raise FileNotFoundError(f"image folder {root} lacks train/ or test/ ({IMAGE_FOLDER_LAYOUT})")
    # Hidden folders (.ipynb_checkpoints, .DS_Store's kin) are no classes: one would shift every
    # label and add a dead output.
    def class_dirs(folder):
        return sorted(d for d in os.listdir(folder)
                      if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))

    classes = class_dirs(train_dir)
    if not classes:
        raise FileNotFoundError(f"no class sub-folders in {train_dir} ({IMAGE_FOLDER_LAYOUT})")
    unknown = sorted(set(class_dirs(test_dir)) - set(classes))
    if unknown:  # their images would be left out of the test accuracy, silently
        raise ValueError(f"image folder {root}: test/ has classes that train/ lacks: {', '.join(unknown)} "
                         f"({IMAGE_FOLDER_LAYOUT})")
    train = _read_image_split(train_dir, classes, size, every_class=True)
    test = _read_image_split(test_dir, classes, size)
    mean = tuple((train.images.float().mean(dim=(0, 2, 3)) / 255).tolist())
    std = tuple((train.images.float().std(dim=(0, 2, 3)) / 255).clamp_min(1e-3).tolist())
    return ImageDataset(os.path.basename(root.rstrip("/")) or "images", train, test, classes, mean, std, augment=True)


# ---------------------------------------------------------------------------- built-in digits
def load_digits(test_fraction=0.2, seed=0):
    """scikit-learn's digits: 1,797 8x8 grey images (values 0..16) of 10 classes, split stratified."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=test_fraction,
                                                        random_state=seed, stratify=digits.target)
    train = ImageSplit(torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64)))
    mean = (float(train.images.float().mean() / 255),)
    std = (float(train.images.float().std() / 255),)
    return ImageDataset("digits", train, ImageSplit(torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64))),
                        [str(i) for i in range(10)], mean, std, augment=False)


DATASETS = ("digits", "cifar10", "folder")


def load_dataset(name, data_dir=None):
    if name not in DATASETS:
        raise ValueError(f"argument 'data' must be one of {DATASETS}, got {name!r}")
    if name == "digits":
        if data_dir is not None:
            # A folder given with the default dataset would otherwise be ignored without a word:
            # the run would train on digits while its user believes it trains on that folder.
            raise ValueError(f"argument 'data_dir' ({data_dir}) is given, but dataset 'digits' is built in and "
                             "reads no folder: choose data 'cifar10' or 'folder' to read it")
        return load_digits()
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs argument 'data_dir'")
    return load_cifar10(data_dir) if name == "cifar10" else load_image_folder(data_dir)


# ---------------------------------------------------------------------------- batching
class TensorLoader:
    """Batches of (normalised float images, labels) from an in-memory split.

    With ``train=True`` it shuffles, and if the dataset asks for it, applies the standard
    augmentation batch-wise: random crop of the original size from the image padded by 4 pixels
    (zeros), and a random horizontal flip. The order and augmentation of epoch ``e`` depend only
    on ``(seed, e)``, which makes resumed runs repeat uninterrupted ones exactly. Move the split
    to a GPU with ``device=`` to keep the whole pipeline there.
    """

    def __init__(self, dataset, split="train", batch_size=128, train=None, seed=0, device="cpu",
                 drop_last=False, shard=(0, 1)):
        if batch_size < 1:
            raise ValueError(f"argument 'batch_size' must be positive, got {batch_size}")
        if split not in ("train", "test"):  # any other word served the test split, unshuffled
            raise ValueError(f"argument 'split' must be 'train' or 'test', got {split!r}")
        data = dataset.train if split == "train" else dataset.test
        self.train = split == "train" if train is None else train
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(dataset.std, device=self.device).view(1, -1, 1, 1) * 255
        self.augment = dataset.augment and self.train
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.shard_index, self.shard_count = shard
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _order(self, generator):
        count = len(self.labels)
        order = torch.randperm(count, generator=generator) if self.train else torch.arange(count)
        if self.shard_count > 1:
            # Distributed: disjoint shares. Training shares are equal (the remainder is dropped) so
            # that the ranks' batches together form exactly the single-process global batch.
            if self.train:
                order = order[: count // self.shard_count * self.shard_count]
            order = order[self.shard_index:: self.shard_count]
        return order

    def _shard_size(self):
        count = len(self.labels)
        if self.shard_count == 1:
            return count
        if self.train:
            return count // self.shard_count
        return len(range(self.shard_index, count, self.shard_count))

    def __len__(self):
        count = self._shard_size()
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def _augment(self, images, generator):
        n, _, h, w = images.shape
        padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (n,), generator=generator).to(self.device)
        dx = torch.randint(0, 9, (n,), generator=generator).to(self.device)
        flip = (torch.rand(n, generator=generator) < 0.5).to(self.device)
        rows = (dy[:, None] + torch.arange(h, device=self.device))[:, None, :, None]
        cols = dx[:, None] + torch.arange(w, device=self.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
        batch = torch.arange(n, device=self.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=self.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = self._order(generator).to(self.device)
        stop = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        for start in range(0, stop, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index].float()
            if self.augment:
                images = self._augment(images, generator)
            yield (images - self.mean) / self.std, self.labels[index]
