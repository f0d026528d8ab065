"""Training data: aug+ two-view batches from Fashion-MNIST (the embedded default) or an ImageFolder.

Determinism: every sample's augmentation is seeded by (seed, epoch, index), and the sampler's order
by (seed, epoch), so a run resumed at any step sees exactly the batches it would have seen, with
any number of loader workers.
"""

from __future__ import annotations

import gzip
import logging
import os
import signal
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from ..run.config import PRESET_DIR
from ..run.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# The signals a job's main process acts on: SLURM's preemption warning (submitit checkpoints and
# requeues on USR1/USR2) and termination. Forked loader workers inherit the handlers.
JOB_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


def ignore_job_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: a worker ignores the job's signals, so only the main
    process checkpoints and requeues (a worker running the inherited handler could rewrite the job's
    saved submission); workers end when the main process does."""
    for sig in JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------
# aug+
def aug_plus(image_size: int, min_scale: float = 0.2, blur: bool = True) -> T.Compose:
    """MoCo v2's aug+, applied independently to each view.

    RandomResizedCrop(scale=(min_scale, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8,
    RandomGrayscale(0.2), GaussianBlur sigma in [0.1, 2] with p=0.5, horizontal flip, ImageNet
    mean/std. The blur kernel is 10% of the image side (23 px at 224), as in SimCLR. ``blur=False``
    drops the blur, as CIFAR-scale recipes do: at 32 px it erases the object.
    """
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
    steps = [
        T.RandomResizedCrop(image_size, scale=(min_scale, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur:
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def sample_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers, e.g. (seed, epoch, index)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not): the format of the MNIST family."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, "FashionMNIST/raw/" + stem, "FashionMNIST/raw/" + stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_mnist_folder(folder: Path) -> bool:
    return all(_idx_file(folder, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair)


def locate_fashion_mnist(path: str | None) -> Path:
    """The folder holding Fashion-MNIST: the given path, Debian's package, or a download."""
    if path is not None:
        if _fashion_mnist_folder(Path(path)):
            return Path(path)
        log.warning("no Fashion-MNIST in data.path=%s; looking elsewhere", path)
    if _fashion_mnist_folder(DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mochi-bench"
    if _fashion_mnist_folder(cache):
        return cache
    # Offline compute nodes can hang on a download: MOCHI_BENCH_NO_DOWNLOAD=1 skips it.
    if not os.environ.get("MOCHI_BENCH_NO_DOWNLOAD"):
        try:
            for train in (True, False):
                torchvision.datasets.FashionMNIST(str(cache), train=train, download=True)
        except Exception as e:  # offline, proxy, disk: all mean the same to the user
            log.debug("Fashion-MNIST download failed: %s", e)
    if _fashion_mnist_folder(cache):
        return cache
    given = f"data.path={path} holds no Fashion-MNIST IDX files" if path else "no data.path given"
    raise UserError(
        f"Fashion-MNIST not found: {given}; the Debian package is not installed "
        f"(apt-get install dataset-fashion-mnist puts it in {DEBIAN_FASHION_MNIST}); "
        f"and the torchvision download into {cache} failed (offline?)"
    )


def load_fashion_mnist(folder: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) of one split."""
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    images = _read_idx(_idx_file(folder, img_stem))
    labels = _read_idx(_idx_file(folder, lbl_stem)).astype(np.int64)
    return images, labels


class ArrayImages(torch.utils.data.Dataset):
    """In-memory grayscale images served as RGB PIL images: (image, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.classes = list(FASHION_MNIST_CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i], mode="L").convert("RGB"), int(self.labels[i])


# ---------------------------------------------------------------------------------------------
# ImageFolder (ImageNet, ImageNet-100)
class ClassListImageFolder(torchvision.datasets.ImageFolder):
    """ImageFolder restricted to the class folders named in a list (e.g. CMC's ImageNet-100)."""

    def __init__(self, root: str, keep: list[str] | None = None, **kw):
        self._keep = keep
        super().__init__(root, **kw)

    def find_classes(self, directory):
        classes, _ = super().find_classes(directory)
        if self._keep is not None:
            missing = sorted(set(self._keep) - set(classes))
            if missing:
                raise UserError(f"{directory} lacks {len(missing)} classes of data.class_list, e.g. {missing[0]}")
            classes = sorted(self._keep)
        return classes, {c: i for i, c in enumerate(classes)}


def _pil_loader_or_none(path: str) -> Image.Image | None:
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("skipping unreadable image %s: %s", path, e)
        return None


def resolve_class_list(name: str | None) -> list[str] | None:
    """The class folder names of a list file, given as a path or as a shipped file in pretrain/configs/."""
    if name is None:
        return None
    p = Path(name)
    if not p.is_file():
        p = PRESET_DIR / name
    if not p.is_file():
        raise UserError(f"config key data.class_list: no file {name} (nor configs/{name})")
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def image_folder(path: str | None, class_list: str | None, split: str = "train") -> torchvision.datasets.ImageFolder:
    if not path:
        raise UserError("data.dataset=imagefolder needs data.path (the ImageNet root, holding train/ and val/)")
    root = Path(path)
    if (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise UserError(f"config key data.path: {path} is not a folder")
    try:
        return ClassListImageFolder(str(root), keep=resolve_class_list(class_list), loader=_pil_loader_or_none)
    except FileNotFoundError as e:
        raise UserError(f"config key data.path: {e}") from None


def base_dataset(cfg_data, split: str = "train") -> torch.utils.data.Dataset:
    """The labelled images of one split, before augmentation; data.subset applies to train."""
    if cfg_data.dataset == "fashion-mnist":
        images, labels = load_fashion_mnist(locate_fashion_mnist(cfg_data.path), split)
        ds = ArrayImages(images, labels)
    else:
        ds = image_folder(cfg_data.path, cfg_data.class_list, "train" if split == "train" else "val")
    if split == "train" and cfg_data.subset:
        ds = torch.utils.data.Subset(ds, range(min(cfg_data.subset, len(ds))))
    return ds


def holdout(n: int, size: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out): indices into ``n`` training images, disjoint, together all of them, each
    sorted; the held-out ones are a uniform draw seeded by ``seed`` alone (the same images for the
    same n and seed, whatever else changes).

    ``size`` follows scikit-learn's ``test_size``: in (0, 1) a fraction of n (rounded, at least 1),
    a whole number >= 1 a count. UserError if it leaves no image on either side.
    """
    count = max(1, round(size * n)) if 0 < size < 1 else int(size)
    if size <= 0 or (size >= 1 and size != count):
        raise UserError(f"validation split {size:g}: give a fraction in (0, 1) or a whole count of images")
    if count >= n:
        raise UserError(f"a validation split of {count} from {n} training images leaves none to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed(seed)))
    return sorted(perm[count:].tolist()), sorted(perm[:count].tolist())


class TwoViews(torch.utils.data.Dataset):
    """(view_q, view_k, label, index, skipped) for keys (epoch, index) from ResumableSampler.

    An unreadable image is replaced by the next readable one so batches keep their size (K must
    stay a multiple of the batch); ``skipped`` counts the replacements.
    """

    MAX_SKIP = 16

    def __init__(self, base: torch.utils.data.Dataset, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        n = len(self.base)
        for skipped in range(self.MAX_SKIP):
            img, label = self.base[(index + skipped) % n]
            if img is not None:
                break
        else:
            raise RuntimeError(f"{self.MAX_SKIP} unreadable images in a row from index {index}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            q, k = self.transform(img), self.transform(img)
        return q, k, label, index, skipped


class ResumableSampler(torch.utils.data.Sampler):
    """This rank's share of a (seed, epoch)-seeded permutation, as (epoch, index) keys.

    Drops the tail so every rank gets ``steps_per_epoch`` full batches (MoCo's drop_last), and
    can start from any batch of the epoch (mid-epoch resume).
    """

    def __init__(self, n: int, batch_per_rank: int, rank: int = 0, world: int = 1, seed: int = 0):
        self.n, self.bpr, self.rank, self.world, self.seed = n, batch_per_rank, rank, world, seed
        self.steps_per_epoch = n // (batch_per_rank * world)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        perm = torch.randperm(self.n, generator=g)[: self.steps_per_epoch * self.bpr * self.world]
        mine = perm[self.rank :: self.world][self.start * self.bpr :]
        return iter([(self.epoch, int(i)) for i in mine])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start) * self.bpr


def collate(batch):
    q, k, label, index, skipped = zip(*batch)
    return (
        torch.stack(q),
        torch.stack(k),
        torch.tensor(label),
        torch.tensor(index),
        int(sum(skipped)),
    )


def train_loader(cfg, rank: int = 0, world: int = 1, pin_memory: bool = False, wrap=None, collate_fn=collate):
    """(loader, sampler) for pretraining; call ``sampler.set_epoch`` before each epoch.

    ``wrap`` turns the labelled training images into the dataset the workers read, keyed by the
    sampler's (epoch, index): by default ``TwoViews`` with aug+ (the ``cpu`` pipeline); the device
    pipelines pass their byte reader and its ``collate_fn``.
    """
    base = base_dataset(cfg.data, "train")
    bpr = cfg.optim.batch_size // world
    sampler = ResumableSampler(len(base), bpr, rank, world, cfg.run.seed)
    if sampler.steps_per_epoch == 0:
        raise UserError(
            f"{len(base)} training images make no full batch of optim.batch_size={cfg.optim.batch_size}"
        )
    ds = wrap(base) if wrap else TwoViews(base, aug_plus(cfg.data.image_size, cfg.data.min_scale, cfg.data.blur),
                                         cfg.run.seed)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=bpr,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=cfg.data.num_workers > 0,
        prefetch_factor=4 if cfg.data.num_workers else None,
        worker_init_fn=ignore_job_signals,
    )
    return loader, sampler
