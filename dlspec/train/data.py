"""Data sources for training: each one turns files on disk into in-memory tensors.

Every loader returns :class:`Dataset` objects whose ``x`` is float32 (images as
``(N, C, H, W)`` in ``[0, 1]``, tabular data as ``(N, F)``) or int64 (integer ``(N, L)``
arrays: token ids) and whose ``y`` holds int64 class ids (classification) or float32
targets (regression). Anything wrong with the user's data
raises :class:`DataError` with the file, what is wrong and what was expected; no raw
exception from numpy, PIL or gzip escapes for bad input.

Sources:

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (no download);
* a directory with the four MNIST-style IDX files (MNIST, Fashion-MNIST), plain or gzipped;
* a directory with one subfolder of images per class (GTSRB, ImageNet-style folders);
* an ``.npz`` file with ``x``/``y`` arrays, or a ``.csv`` file with a label column.

:func:`load_source` picks the right one from a name or path.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import math
import os
import shutil
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from dlspec.files import atomic_file

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES",
    "NAMED_SOURCES",
    "DataError",
    "Dataset",
    "data_root",
    "load_arrays",
    "load_digits",
    "load_idx_dir",
    "load_image_folder",
    "load_source",
    "open_image",
    "read_idx",
    "read_npz",
    "split",
]


class DataError(Exception):
    """A problem with the user's data: the message names the file, what is wrong with it and
    what was expected, ready to show as is (no traceback)."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


@dataclass
class Dataset:
    """Samples held in memory.

    ``x`` is ``(N, C, H, W)`` float32 in ``[0, 1]`` for images, ``(N, F)`` float32 for
    tabular data or ``(N, L)`` int64 token ids (also integer features); ``y`` is ``(N,)``
    int64 class ids, or float32 targets for regression (a language model's: ``(N, L)`` ids);
    ``classes[i]`` is the name of class id ``i`` (empty for regression).
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def is_classification(self) -> bool:
        """True when ``y`` holds class ids rather than regression targets."""
        return not self.y.is_floating_point()

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.classes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``(C, H, W)`` or ``(F,)``."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: torch.Tensor | np.ndarray | Sequence[int], name: str) -> Dataset:
        """The samples at ``indices`` (same classes), as a new dataset called ``name``."""
        if isinstance(indices, torch.Tensor):
            index = indices.to(device=self.x.device, dtype=torch.int64)
        else:
            index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.x.device)
        return Dataset(self.x[index], self.y[index], list(self.classes), name)


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The embedded default: scikit-learn's 1,797 real 8x8 handwritten digits (no download).

    Pixels 0..16 are scaled to ``[0, 1]``; ``x`` is ``(N, 1, 8, 8)``. The data is split into
    ``(train, test)`` deterministically: stratified by class, ``test_fraction`` held out,
    shuffled with ``seed``.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.float32).reshape(-1, 1, 8, 8) / np.float32(16.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    full = Dataset(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        [str(int(t)) for t in bunch.target_names],
        "digits",
    )
    train, test = split(full, test_fraction, seed)
    train.name, test.name = "digits/train", "digits/test"
    return train, test


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Fashion-MNIST's class names, used when the directory's name mentions "fashion".
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (optionally gzipped, detected from its first bytes) into an array.

    Checks the magic number (two zero bytes, a type code, the number of dimensions), the type
    code, and that the data is exactly as long as the dimensions say; any problem raises
    :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"corrupt or truncated gzip data ({exc})", path) from None
    if len(raw) < 4:
        raise DataError(f"file is {len(raw)} bytes long, too short for an IDX header", path)
    if raw[0] != 0 or raw[1] != 0:
        magic = int.from_bytes(raw[:4], "big")
        raise DataError(
            f"bad magic number 0x{magic:08X}: an IDX file starts with 0x0000TTNN "
            "(TT = type code, NN = number of dimensions), e.g. 0x00000803 for MNIST images",
            path,
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"unknown IDX type code 0x{code:02X} (expected one of {known})", path)
    if ndim == 0:
        raise DataError("IDX header declares 0 dimensions", path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"truncated IDX header: {ndim} dimensions need {header} header bytes, "
            f"the file has {len(raw)}",
            path,
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    shape = " x ".join(f"{d:,}" for d in dims)
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{problem}: the header declares {shape} values of {dtype.itemsize} byte(s) = "
            f"{expected:,} data bytes, but the file holds {actual:,}",
            path,
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    # MNIST ships "train-images-idx3-ubyte", some mirrors "train-images.idx3-ubyte"
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _idx_directory(path: Path) -> Path | None:
    """The folder holding the IDX files: ``path`` itself, ``path/raw`` or ``path/*/raw``
    (torchvision's layout), or None if there is none."""
    candidates = [path, path / "raw"]
    if path.is_dir():
        candidates += sorted(p / "raw" for p in path.iterdir() if p.is_dir())
    for candidate in candidates:
        if _find_idx_file(candidate, _IDX_FILES["train_images"]) is not None:
            return candidate
    return None


def _download_idx(directory: Path, flavour: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stem in _IDX_FILES.values():
        if _find_idx_file(directory, stem) is not None:
            continue
        target = directory / f"{stem}.gz"
        errors = []
        for mirror in _MIRRORS[flavour]:
            url = mirror + target.name
            try:
                with (
                    urllib.request.urlopen(url, timeout=30) as response,
                    atomic_file(target) as tmp,
                    tmp.open("wb") as out,
                ):
                    shutil.copyfileobj(response, out)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        else:
            raise DataError(
                f"could not download {target.name} ({'; '.join(errors)}); download the four "
                f"{flavour} files ({', '.join(_IDX_FILES.values())}, optionally .gz) by hand "
                "into this directory",
                directory,
            )


def load_idx_dir(
    path: str | os.PathLike[str],
    *,
    download: bool = False,
    classes: Sequence[str] | None = None,
) -> tuple[Dataset, Dataset]:
    """MNIST or Fashion-MNIST from a directory with the standard IDX files.

    The directory (or its ``raw/`` or ``*/raw/`` subfolder, as torchvision stores them) must
    hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``). Returns
    ``(train, test)`` with ``x`` as ``(N, 1, H, W)`` in ``[0, 1]``.

    ``classes`` names the classes; by default they are ``"0"``, ``"1"``, ..., or
    Fashion-MNIST's names when the directory's name contains "fashion". With ``download``
    the missing files are fetched from a public mirror first (needs a network connection).
    """
    root = Path(path)
    directory = _idx_directory(root)
    names = [root.resolve().name] + ([] if directory is None else [directory.parent.name])
    flavour = "fashion-mnist" if any("fashion" in n.lower() for n in names) else "mnist"
    if directory is None and download:
        _download_idx(root, flavour)
        directory = root
    if directory is None:
        raise DataError(
            f"no IDX files found: expected {', '.join(_IDX_FILES.values())} (optionally .gz) "
            "in this directory or its raw/ subfolder",
            root,
        )
    files: dict[str, Path] = {}
    for key, stem in _IDX_FILES.items():
        found = _find_idx_file(directory, stem)
        if found is None:
            raise DataError(f"missing {stem} (or {stem}.gz) beside the other IDX files", directory)
        files[key] = found

    arrays = {key: read_idx(file) for key, file in files.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        image_file, label_file = files[f"{part}_images"], files[f"{part}_labels"]
        if images.ndim != 3:
            raise DataError(
                f"expected images of shape (N, H, W), found {images.ndim} dimensions "
                f"{images.shape}",
                image_file,
            )
        if labels.ndim != 1:
            raise DataError(
                f"expected labels of shape (N,), found {labels.ndim} dimensions {labels.shape}",
                label_file,
            )
        if len(images) != len(labels):
            raise DataError(
                f"holds {len(labels):,} labels but {image_file.name} holds {len(images):,} "
                "images; the counts must match",
                label_file,
            )
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise DataError("labels must be non-negative integers", label_file)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"training images are {arrays['train_images'].shape[1:]} but test images are "
            f"{arrays['test_images'].shape[1:]}",
            files["test_images"],
        )

    largest = max(int(arrays[f"{p}_labels"].max(initial=0)) for p in ("train", "test"))
    if classes is None:
        classes = FASHION_MNIST_CLASSES if flavour == "fashion-mnist" else []
        classes = list(classes) or [str(i) for i in range(max(10, largest + 1))]
    if largest >= len(classes):
        raise DataError(f"label {largest} is out of range for {len(classes)} classes", directory)

    name = root.resolve().name or "idx"

    def dataset(part: str) -> Dataset:
        images = arrays[f"{part}_images"]
        x = images.astype(np.float32)
        if images.dtype == np.uint8:
            x *= np.float32(1 / 255)
        y = arrays[f"{part}_labels"].astype(np.int64)
        return Dataset(
            torch.from_numpy(x[:, None]), torch.from_numpy(y), list(classes), f"{name}/{part}"
        )

    return dataset("train"), dataset("test")


# ---------------------------------------------------------------------------------------------
# Image folders (GTSRB and friends)

#: File suffixes read as images; other files (GTSRB's per-class CSVs, say) are ignored.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

_T = TypeVar("_T")
_R = TypeVar("_R")


def _parallel_map(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[fn(item) for item in items]`` on a thread pool (PIL decodes without the GIL)."""
    if len(items) < 64:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) + 2)) as pool:
        return list(pool.map(fn, items, chunksize=64))


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str]) -> Iterator[PIL.Image.Image]:
    """``PIL.Image.open``, with every problem as a :class:`DataError` naming the file: not an
    image, truncated or corrupt (also while decoding, inside the block), or more than
    ``Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb: refused before decoding)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DataError(
            f"the image has more than {Image.MAX_IMAGE_PIXELS:,} pixels; resize it first", path
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"cannot read image: {exc}", path) from None


def _class_folders(root: Path) -> list[Path]:
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    # numeric folder names ("0", "1", ..., "10") sort as numbers, so class id 10 is folder "10"
    if folders and all(p.name.isdigit() for p in folders):
        return sorted(folders, key=lambda p: int(p.name))
    return sorted(folders, key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        height = width = size
    else:
        if len(size) != 2:
            raise DataError(f"image size must be one number or (height, width), got {size!r}")
        height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise DataError(f"image size must be positive, got {height} x {width}")
    return height, width


def load_image_folder(
    path: str | os.PathLike[str],
    size: int | Sequence[int] | None = None,
    *,
    classes: Sequence[str] | None = None,
    channels: int | None = None,
) -> Dataset:
    """Images in one subfolder per class (as GTSRB ships its training set).

    Class names are the subfolder names, sorted (numerically when all are numbers); images
    are found recursively by suffix (see :data:`IMAGE_SUFFIXES`), read with PIL, converted to
    RGB (or to grayscale when every image is grayscale) and resized (bilinear) to ``size``
    (``(height, width)`` or one number), by default the most common size among the images.
    ``classes`` fixes the class list and ``channels`` (1 or 3) the colour mode, to load a test
    folder like its training folder.
    Empty folders and unreadable images raise :class:`DataError` naming the file.
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DataError("not a directory (expected one subfolder of images per class)", root)
    folders = _class_folders(root)
    if not folders:
        raise DataError(
            "no class subfolders: expected one subfolder of images per class, "
            "e.g. cats/001.png and dogs/001.png",
            root,
        )
    names = [f.name for f in folders]
    if classes is not None:
        classes = list(classes)
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(
                f"class folder(s) {', '.join(unknown)} are not among the training classes", root
            )
    else:
        classes = names
    class_id = {name: i for i, name in enumerate(classes)}

    files: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        found = _image_files(folder)
        if not found:
            raise DataError(
                f"class folder holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})",
                folder,
            )
        files += found
        labels += [class_id[folder.name]] * len(found)

    def header(file: Path) -> tuple[tuple[int, int], str]:
        with open_image(file) as im:
            return im.size, im.mode

    headers = _parallel_map(header, files)
    target = _parse_size(size)
    if target is None:
        (width, height), _ = Counter(s for s, _ in headers).most_common(1)[0]
        target = (height, width)
    height, width = target
    if channels is None:
        channels = 1 if all(m in _GRAY_MODES for _, m in headers) else 3
    elif channels not in (1, 3):
        raise DataError(f"images can be loaded with 1 or 3 channels, not {channels}")
    mode = "L" if channels == 1 else "RGB"
    pixels = np.empty((len(files), height, width, channels), dtype=np.uint8)

    def decode(item: tuple[int, Path]) -> None:
        index, file = item
        with open_image(file) as im:
            image = im.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels[index] = np.asarray(image).reshape(height, width, channels)

    _parallel_map(decode, list(enumerate(files)))
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float().div_(255)
    y = torch.tensor(labels, dtype=torch.int64)
    return Dataset(x, y, classes, root.resolve().name or "images")


# ---------------------------------------------------------------------------------------------
# Arrays: .npz and .csv

_X_KEYS = ("x", "X", "images", "inputs", "features", "data")
_Y_KEYS = ("y", "Y", "labels", "label", "targets", "target")
_LABEL_COLUMNS = ("label", "labels", "target", "y", "class")
_MAX_CLASSES = 100_000


def _pick(keys: Iterable[str], candidates: Sequence[str]) -> str | None:
    available = set(keys)
    return next((k for k in candidates if k in available), None)


def _features(x: np.ndarray, path: Path, what: str) -> torch.Tensor:
    """Validate and convert an input array: (N, F) tabular, (N, H, W) or (N, C, H, W) images;
    channels-last (N, H, W, C) with C in {1, 3} is transposed; uint8 is scaled to [0, 1].
    Other integer (N, L) arrays stay integers, as int64: token ids for a sequence model (a
    float model's input path converts them)."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} must be numeric, found dtype {x.dtype}", path)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim not in (2, 4):
        raise DataError(
            f"{what} has shape {x.shape}; expected (N, F), (N, H, W), (N, C, H, W) or (N, H, W, C)",
            path,
        )
    if len(x) == 0:
        raise DataError(f"{what} holds no samples", path)
    if x.ndim == 2 and x.dtype.kind in "iu" and x.dtype != np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    scaled = x.dtype == np.uint8
    out = np.ascontiguousarray(x, dtype=np.float32)
    if scaled:
        out *= np.float32(1 / 255)
    bad = ~np.isfinite(out)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), out.shape)
        raise DataError(
            f"{what} holds {int(bad.sum()):,} NaN or infinite value(s), the first at sample "
            f"{int(first[0])}",
            path,
        )
    return torch.from_numpy(out)


def _targets(
    y: np.ndarray, path: Path, classes: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Labels -> (y, classes). Integers (or booleans) are class ids, strings are class names
    (sorted into ids), floats are regression targets; one-hot rows become class ids."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.dtype.kind in "biuf" and y.size:
        if np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
            y = y.argmax(axis=1)
        else:
            raise DataError(
                f"labels have shape {y.shape}; expected (N,) class ids or targets, or one-hot rows",
                path,
            )
    elif y.ndim != 1:
        raise DataError(f"labels have shape {y.shape}; expected (N,)", path)

    if y.dtype.kind in "US":
        names = [str(c) for c in classes] if classes is not None else sorted(set(y.tolist()))
        lookup = np.asarray(names)
        order = np.argsort(lookup)
        pos = np.clip(np.searchsorted(lookup[order], y), 0, len(lookup) - 1)
        ids = order[pos]
        missing = lookup[ids] != y
        if missing.any():
            raise DataError(f"label {y[missing][0]!r} is not one of the classes", path)
        return torch.from_numpy(ids.astype(np.int64)), names
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError("targets hold NaN or infinite values", path)
        return torch.from_numpy(y.astype(np.float32)), []
    if y.dtype.kind in "biu":
        ids = y.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise DataError(f"class ids must be >= 0, found {int(ids.min())}", path)
        count = int(ids.max(initial=-1)) + 1
        if classes is not None:
            if count > len(classes):
                raise DataError(
                    f"class id {count - 1} is out of range for {len(classes)} class names", path
                )
            return torch.from_numpy(ids), [str(c) for c in classes]
        if count > _MAX_CLASSES:
            raise DataError(
                f"integer labels go up to {count - 1:,}; for regression store the targets as "
                "floats",
                path,
            )
        return torch.from_numpy(ids), [str(i) for i in range(count)]
    raise DataError(f"labels must be integers, strings or floats, found dtype {y.dtype}", path)


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickled objects). A file that is truncated,
    corrupt or not an ``.npz`` at all raises :class:`DataError` saying so."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise DataError(
                    "holds a single .npy array, not an .npz archive of named arrays", path
                )
            return {key: npz[key] for key in npz.files}
    except DataError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy's format checks: anything from bad bytes
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot read .npz file ({reason}); is it truncated, corrupt, or not an .npz?",
            path,
        ) from None


def _npz_parts(path: Path) -> dict[str, tuple[str, str]]:
    """Part name ("all", "train", "test") -> (x key, y key) in an .npz file."""
    keys = list(read_npz(path))
    parts: dict[str, tuple[str, str]] = {}
    xk, yk = _pick(keys, _X_KEYS), _pick(keys, _Y_KEYS)
    if xk and yk:
        parts["all"] = (xk, yk)
    for part in ("train", "test"):
        if f"x_{part}" in keys and f"y_{part}" in keys:
            parts[part] = (f"x_{part}", f"y_{part}")
    if not parts:
        raise DataError(
            f"found arrays {', '.join(keys) or '(none)'}; expected 'x' and 'y' "
            "(or X/images and labels), or x_train/y_train",
            path,
        )
    return parts


def _load_npz(path: Path, part: str) -> Dataset:
    parts = _npz_parts(path)
    key = part if part in parts else "all" if part == "train" and "all" in parts else None
    if key is None:
        raise DataError(f"holds no {part} arrays (x_{part} / y_{part})", path)
    xk, yk = parts[key]
    arrays = read_npz(path)
    x, y = arrays[xk], arrays[yk]
    names_key = _pick(arrays, ("classes", "class_names"))
    names = [str(c) for c in np.ravel(arrays[names_key]).tolist()] if names_key else None
    for what, array in ((xk, x), (yk, y)):
        if array.ndim == 0:
            raise DataError(f"{what!r} is a single value; expected one row per sample", path)
    if len(x) != len(y):
        raise DataError(f"{xk!r} holds {len(x):,} samples but {yk!r} holds {len(y):,} labels", path)
    xt = _features(x, path, repr(xk))
    yt, classes = _targets(y, path, names)
    suffix = "" if key == "all" else f"/{key}"
    return Dataset(xt, yt, classes, path.stem + suffix)


def _csv_dialect(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_csv(path: Path) -> Dataset:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read CSV file: {exc}", path) from None
    if not first.strip():
        raise DataError("CSV file is empty (expected a header and one row per sample)", path)
    delimiter = _csv_dialect(first)
    header = next(csv.reader(io.StringIO(first), delimiter=delimiter))
    if len(header) < 2:
        raise DataError("CSV needs at least two columns: features and a label", path)
    has_header = not all(_is_number(cell) for cell in header)
    lowered = [h.strip().lower() for h in header] if has_header else []
    label_col = next((lowered.index(n) for n in _LABEL_COLUMNS if n in lowered), len(header) - 1)
    feature_cols = [i for i in range(len(header)) if i != label_col]
    skip = int(has_header)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": checked below
            x = np.loadtxt(
                path,
                np.float32,
                delimiter=delimiter,
                skiprows=skip,
                usecols=feature_cols,
                quotechar='"',
                ndmin=2,
                encoding="utf-8-sig",
            )
            y = np.loadtxt(
                path,
                str,
                delimiter=delimiter,
                skiprows=skip,
                usecols=label_col,
                quotechar='"',
                ndmin=1,
                encoding="utf-8-sig",
            )
    except ValueError as exc:
        raise DataError(f"malformed CSV: {exc}", path) from None
    if len(y) == 0:
        raise DataError("CSV file has a header but no rows", path)
    y = np.char.strip(y)
    labels: np.ndarray = y
    for dtype in (np.int64, np.float32):  # class ids, else regression targets, else names
        try:
            labels = y.astype(dtype)
            break
        except ValueError:
            continue
    xt = _features(x, path, "features")
    yt, classes = _targets(labels, path)
    return Dataset(xt, yt, classes, path.stem)


def load_arrays(path: str | os.PathLike[str], part: str = "train") -> Dataset:
    """Samples from an ``.npz`` or ``.csv`` file.

    ``.npz``: arrays ``x`` and ``y`` (also ``X``/``images``/``inputs`` and
    ``labels``/``targets``), or Keras-style ``x_train``/``y_train``/``x_test``/``y_test``
    (``part`` picks "train" or "test"); an optional ``classes`` array names the classes.
    Images may be ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)``; uint8 is scaled to
    ``[0, 1]``, other numbers are kept as they are.

    ``.csv``: a header row (optional) and one row per sample; the label is the column named
    label/target/y/class, else the last one. Integer labels are class ids, text labels are
    class names (sorted into ids), decimal labels are regression targets.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError("no such file", file)
    suffix = file.suffix.lower()
    if suffix == ".npz":
        return _load_npz(file, part)
    if suffix == ".csv":
        if part != "train":
            raise DataError(f"a CSV file holds one set of samples, there is no {part!r} part", file)
        return _load_csv(file)
    raise DataError(f"unsupported file type {suffix or '(none)'!r}; expected .npz or .csv", file)


# ---------------------------------------------------------------------------------------------
# Splitting and dispatch


def split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of ``ds`` deterministically: returns ``(rest, held_out)``.

    For classification the split is stratified (each class keeps its share, rounded);
    samples keep their original order within each part.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be between 0 and 1, got {fraction}")
    n = len(ds)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if ds.is_classification:
        labels = ds.y.numpy()[perm]
        order = np.argsort(labels, kind="stable")  # shuffled indices grouped by class
        _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        rank = np.arange(n) - np.repeat(starts, counts)  # position within its class
        take = np.floor(counts * fraction + 0.5).astype(np.int64)  # round half up per class
        held = np.zeros(n, dtype=bool)
        held[perm[order]] = rank < np.repeat(take, counts)
    else:
        held = np.zeros(n, dtype=bool)
        held[perm[: int(np.floor(n * fraction + 0.5))]] = True
    if held.all() or not held.any():
        raise DataError(
            f"cannot split {n:,} samples of {ds.name} with fraction {fraction}: "
            "one part would be empty"
        )
    index = np.arange(n)
    return ds.subset(index[~held], ds.name), ds.subset(index[held], f"{ds.name}/held-out")


#: Names :func:`load_source` understands besides paths.
NAMED_SOURCES = ("digits", "mnist", "fashion-mnist")


def data_root() -> Path:
    """Where named datasets live: ``$DLSPEC_DATA`` or ``~/.cache/dlspec``."""
    return Path(os.environ.get("DLSPEC_DATA") or Path.home() / ".cache" / "dlspec")


_TEST_FOLDERS = ("test", "val", "valid", "validation")


def load_source(
    source: str | os.PathLike[str],
    *,
    size: int | Sequence[int] | None = None,
    download: bool = False,
    seed: int = 0,
) -> tuple[Dataset, Dataset | None]:
    """Load a data source by name or path: returns ``(train, test)``, ``test`` None when the
    source has no separate test set. A name is used only when no file or directory of that
    name exists.

    * ``"digits"``: :func:`load_digits` (split with ``seed``);
    * ``"mnist"`` / ``"fashion-mnist"``: IDX files under :func:`data_root` (fetched there
      when ``download`` is set);
    * a directory with IDX files: :func:`load_idx_dir`;
    * a directory with ``train/`` and ``test/`` (or ``val/``) image folders: both, via
      :func:`load_image_folder`, the test set resized like the training set;
    * any other directory: :func:`load_image_folder` (``size`` as there);
    * an ``.npz`` / ``.csv`` file: :func:`load_arrays` (with the test part when an ``.npz``
      has ``x_test``/``y_test``).
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists():
        key = text.strip().lower().replace("_", "-")
        if key == "digits":
            return load_digits(seed=seed)
        if key in ("mnist", "fashion-mnist", "fashionmnist"):
            name = "fashion-mnist" if "fashion" in key else "mnist"
            directory = data_root() / name
            if not download and _idx_directory(directory) is None:
                raise DataError(
                    f"{name} is not downloaded: {directory} holds no IDX files; enable "
                    "downloading, or copy the four IDX files there, or give their directory"
                )
            return load_idx_dir(directory, download=download)
        raise DataError(
            f"data source {text!r} not found: no such file or directory; expected one of "
            f"{', '.join(NAMED_SOURCES)}, a directory (IDX files or one subfolder per class) "
            "or an .npz / .csv file"
        )
    if path.is_file():
        if path.suffix.lower() == ".npz" and "test" in _npz_parts(path):
            return load_arrays(path, "train"), load_arrays(path, "test")
        return load_arrays(path), None
    if not path.is_dir():
        raise DataError("not a regular file or a directory (a pipe, socket or device?)", path)
    if _idx_directory(path) is not None:
        return load_idx_dir(path)
    train_dir = path / "train"
    test_dir = next((path / t for t in _TEST_FOLDERS if (path / t).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None and _class_folders(train_dir):
        train = load_image_folder(train_dir, size)
        test = load_image_folder(
            test_dir,
            (train.x.shape[2], train.x.shape[3]),
            classes=train.classes,
            channels=train.x.shape[1],
        )
        base = path.resolve().name
        train.name, test.name = f"{base}/train", f"{base}/{test_dir.name}"
        return train, test
    return load_image_folder(path, size), None
