"""The training data path: loaders (IDX, image folders, npz/csv, digits), splits, transforms."""

from __future__ import annotations

import gzip
import math
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlspec.train import data as data_module
from dlspec.train.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    Dataset,
    load_arrays,
    load_digits,
    load_idx_dir,
    load_image_folder,
    load_source,
    read_idx,
    split,
)
from dlspec.train.transforms import (
    Augment,
    color_jitter,
    fit_to_input,
    normalize,
    random_rotation,
    rotate,
    to_grayscale,
)

# --------------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}
    code = codes[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    raw = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def make_idx_dir(
    root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    train_x = rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8)
    train_y = (np.arange(n_train) % 10).astype(np.uint8)
    test_x = rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8)
    test_y = (np.arange(n_test) % 10).astype(np.uint8)
    write_idx(root / "train-images-idx3-ubyte", train_x, gz)
    write_idx(root / "train-labels-idx1-ubyte", train_y, gz)
    write_idx(root / "t10k-images-idx3-ubyte", test_x, gz)
    write_idx(root / "t10k-labels-idx1-ubyte", test_y, gz)
    return train_x, train_y


def save_png(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color: int | tuple[int, int, int] = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)


def make_image_folder(root: Path) -> None:
    save_png(root / "cat" / "a.png", (6, 4), value=10)
    save_png(root / "cat" / "b.png", (6, 4), value=20)
    save_png(root / "dog" / "a.png", (6, 4), value=30)
    save_png(root / "dog" / "big.png", (12, 8), value=40)  # resized to the common 6x4
    save_png(root / "emu" / "x.png", (6, 4), mode="L", value=50)  # grayscale, made RGB
    (root / "dog" / "notes.csv").write_text("ignored,file\n")


# --------------------------------------------------------------------------------------------
# digits


def test_digits_is_the_real_sklearn_set_split_stratified() -> None:
    train, test = load_digits()
    assert len(train) + len(test) == 1797
    assert len(test) == pytest.approx(0.2 * 1797, abs=5)
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64
    assert train.classes == [str(i) for i in range(10)]
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert set(test.y.tolist()) == set(range(10))
    again, _ = load_digits()
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


# --------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_plain_and_gzipped(tmp_path: Path, gz: bool) -> None:
    train_x, train_y = make_idx_dir(tmp_path / "mnist", gz=gz)
    train, test = load_idx_dir(tmp_path / "mnist")
    assert train.x.shape == (12, 1, 6, 5) and test.x.shape == (5, 1, 6, 5)
    assert torch.allclose(train.x[:, 0], torch.from_numpy(train_x).float() / 255)
    assert train.y.tolist() == train_y.tolist()
    assert train.classes == [str(i) for i in range(10)]
    assert train.name == "mnist/train"


def test_idx_dir_torchvision_layout_and_fashion_names(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "data" / "FashionMNIST" / "raw")
    train, _ = load_idx_dir(tmp_path / "data")
    assert train.classes == FASHION_MNIST_CLASSES


def test_read_idx_roundtrips_wider_types(tmp_path: Path) -> None:
    array = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a-idx2", array)), array)
    floats = np.linspace(0, 1, 6, dtype=np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b-idx1", floats, gz=True)), floats)


def _corrupt(path: Path, kind: str) -> None:
    raw = path.read_bytes()
    if kind == "magic":
        path.write_bytes(b"\x12\x34" + raw[2:])
    elif kind == "type":
        path.write_bytes(raw[:2] + b"\x07" + raw[3:])
    elif kind == "truncated":
        path.write_bytes(raw[:-7])
    elif kind == "trailing":
        path.write_bytes(raw + b"\x00")
    elif kind == "header":
        path.write_bytes(raw[:9])


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("magic", "bad magic number 0x1234"),
        ("type", "unknown IDX type code 0x07"),
        ("truncated", "truncated"),
        ("trailing", "trailing bytes"),
        ("header", "truncated IDX header"),
    ],
)
def test_corrupt_idx_names_the_file(tmp_path: Path, kind: str, words: str) -> None:
    make_idx_dir(tmp_path)
    _corrupt(tmp_path / "train-images-idx3-ubyte", kind)
    with pytest.raises(DataError, match=words) as info:
        load_idx_dir(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=True)
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DataError, match="gzip") as info:
        load_idx_dir(tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)


def test_idx_label_and_image_count_mismatch(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match="11 labels but train-images-idx3-ubyte holds 12") as info:
        load_idx_dir(tmp_path)
    assert "train-labels-idx1-ubyte" in str(info.value)


def test_idx_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no IDX files found"):
        load_idx_dir(tmp_path)
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_idx_dir(tmp_path)


def test_download_failure_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float = 0) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="download the four mnist files") as info:
        load_idx_dir(tmp_path / "mnist", download=True)
    assert "network is unreachable" in str(info.value)


# --------------------------------------------------------------------------------------------
# image folders


def test_image_folder(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "pets")
    ds = load_image_folder(tmp_path / "pets")
    assert ds.classes == ["cat", "dog", "emu"]
    assert ds.y.tolist() == [0, 0, 1, 1, 2]
    assert ds.x.shape == (5, 3, 4, 6)  # most common size 6x4 (W x H), RGB since not all gray
    assert torch.allclose(ds.x[0, :, 0, 0], torch.tensor([10, 245, 7]) / 255)
    assert torch.allclose(ds.x[3, :, 0, 0], torch.tensor([40, 215, 7]) / 255)  # resized
    assert torch.allclose(ds.x[4, :, 0, 0], torch.full((3,), 50 / 255))  # L -> RGB
    sized = load_image_folder(tmp_path / "pets", size=(3, 2))
    assert sized.x.shape == (5, 3, 3, 2)


def test_image_folder_grayscale_and_numeric_class_order(tmp_path: Path) -> None:
    for name in ("0", "2", "10"):
        save_png(tmp_path / name / "a.png", (4, 4), mode="L", value=int(name))
    ds = load_image_folder(tmp_path)
    assert ds.classes == ["0", "2", "10"] and ds.x.shape == (3, 1, 4, 4)


def test_image_folder_errors_name_the_file(tmp_path: Path) -> None:
    make_image_folder(tmp_path)
    broken = tmp_path / "dog" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="cannot read image") as info:
        load_image_folder(tmp_path)
    assert str(broken) in str(info.value)

    broken.unlink()
    (tmp_path / "yak").mkdir()
    with pytest.raises(DataError, match="class folder holds no images") as info:
        load_image_folder(tmp_path)
    assert str(tmp_path / "yak") in str(info.value)

    with pytest.raises(DataError, match="no class subfolders"):
        load_image_folder(tmp_path / "yak")


def test_image_folder_truncated_png(tmp_path: Path) -> None:
    make_image_folder(tmp_path)
    png = tmp_path / "cat" / "noise.png"
    noise = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(noise).save(png)
    png.write_bytes(png.read_bytes()[:70])  # header intact, pixel data cut short
    with pytest.raises(DataError) as info:
        load_image_folder(tmp_path)
    assert str(png) in str(info.value)


# --------------------------------------------------------------------------------------------
# arrays


def test_npz_uint8_images_and_aliases(tmp_path: Path) -> None:
    images = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3) * 7
    np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 2, 1, 2]))
    ds = load_arrays(tmp_path / "a.npz")
    assert ds.x.shape == (4, 1, 3, 3) and float(ds.x.max()) <= 1.0
    assert torch.allclose(ds.x[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.classes == ["0", "1", "2"] and ds.y.dtype == torch.int64


def test_npz_channels_last_floats_and_string_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((3, 5, 5, 3)).astype(np.float64)
    np.savez(tmp_path / "b.npz", X=x, y=np.array(["b", "a", "b"]))
    ds = load_arrays(tmp_path / "b.npz")
    assert ds.x.shape == (3, 3, 5, 5) and ds.x.dtype == torch.float32
    assert ds.classes == ["a", "b"] and ds.y.tolist() == [1, 0, 1]


def test_npz_keras_style_gives_train_and_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        y_train=np.arange(6) % 3,
        x_test=rng.integers(0, 256, (2, 4, 4), dtype=np.uint8),
        y_test=np.array([0, 1]),
    )
    train, test = load_source(tmp_path / "mnist.npz")
    assert test is not None
    assert (len(train), len(test)) == (6, 2) and train.x.shape[1:] == (1, 4, 4)


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "wrong.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(DataError, match="expected 'x' and 'y'"):
        load_arrays(tmp_path / "wrong.npz")
    np.savez(tmp_path / "count.npz", x=np.zeros((3, 2)), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match="3 samples but 'y' holds 2"):
        load_arrays(tmp_path / "count.npz")
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0, np.nan]]), y=np.array([0]))
    with pytest.raises(DataError, match="NaN"):
        load_arrays(tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz"):
        load_arrays(tmp_path / "junk.npz")


def test_csv_label_column_by_name_and_last(tmp_path: Path) -> None:
    (tmp_path / "named.csv").write_text("label,f1,f2\ncat,1,2\ndog,3,4\ncat,5,6\n")
    ds = load_arrays(tmp_path / "named.csv")
    assert ds.x.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert ds.classes == ["cat", "dog"] and ds.y.tolist() == [0, 1, 0]

    (tmp_path / "last.csv").write_text("a;b;kind\n0.5;1;2\n0.25;1;0\n")
    ds = load_arrays(tmp_path / "last.csv")
    assert ds.x.shape == (2, 2) and ds.classes == ["0", "1", "2"] and ds.y.tolist() == [2, 0]


def test_csv_regression_and_errors(tmp_path: Path) -> None:
    (tmp_path / "reg.csv").write_text("x,target\n1,0.5\n2,1.5\n")
    ds = load_arrays(tmp_path / "reg.csv")
    assert ds.y.dtype == torch.float32 and ds.classes == [] and not ds.is_classification

    (tmp_path / "bad.csv").write_text("x,y,label\n1,2,0\n1,oops,1\n")
    with pytest.raises(DataError, match="malformed CSV") as info:
        load_arrays(tmp_path / "bad.csv")
    assert "bad.csv" in str(info.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_arrays(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("a,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_arrays(tmp_path / "header.csv")
    (tmp_path / "data.txt").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_arrays(tmp_path / "data.txt")


# --------------------------------------------------------------------------------------------
# split and load_source


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    y = torch.arange(100) % 4
    ds = Dataset(torch.arange(100, dtype=torch.float32)[:, None], y, list("abcd"), "toy")
    rest, held = split(ds, 0.2, seed=3)
    assert (len(rest), len(held)) == (80, 20)
    assert torch.bincount(held.y).tolist() == [5, 5, 5, 5]
    ids = set(rest.x[:, 0].tolist()) | set(held.x[:, 0].tolist())
    assert ids == set(range(100))
    again = split(ds, 0.2, seed=3)[1]
    assert torch.equal(again.x, held.x)
    assert not torch.equal(split(ds, 0.2, seed=4)[1].x, held.x)
    with pytest.raises(DataError):
        split(ds, 1.0, seed=0)


def test_load_source_dispatch(tmp_path: Path) -> None:
    train, test = load_source("digits")
    assert test is not None and len(train) + len(test) == 1797

    make_idx_dir(tmp_path / "idx")
    train, test = load_source(tmp_path / "idx")
    assert test is not None and train.x.shape[1:] == (1, 6, 5)

    make_image_folder(tmp_path / "folder")
    train, test = load_source(tmp_path / "folder")
    assert test is None and train.classes == ["cat", "dog", "emu"]

    make_image_folder(tmp_path / "both" / "train")
    save_png(tmp_path / "both" / "val" / "dog" / "v.png", (9, 9), mode="L")
    train, test = load_source(tmp_path / "both", size=5)
    assert test is not None and test.x.shape == (1, 3, 5, 5) and test.y.tolist() == [1]

    (tmp_path / "t.csv").write_text("a,b\n1,0\n2,1\n")
    assert load_source(tmp_path / "t.csv")[1] is None

    with pytest.raises(DataError, match="not found"):
        load_source(tmp_path / "nowhere")


def test_named_mnist_needs_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLSPEC_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="mnist is not downloaded"):
        load_source("mnist")
    make_idx_dir(tmp_path / "fashion-mnist", gz=True)
    train, _ = load_source("fashion_mnist")
    assert train.classes == FASHION_MNIST_CLASSES
    assert data_module.data_root() == tmp_path


# --------------------------------------------------------------------------------------------
# transforms


def test_fit_to_input_resizes_and_repeats_gray() -> None:
    x = torch.rand(4, 1, 28, 28)
    out = fit_to_input(x, (3, 48, 48))
    assert out.shape == (4, 3, 48, 48)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    same = fit_to_input(x, (3, 28, 28))
    assert torch.equal(same, x.expand(-1, 3, -1, -1))
    assert fit_to_input(x, (1, 28, 28)) is x
    small = fit_to_input(torch.ones(2, 1, 16, 16), (1, 4, 4))  # antialiased downscale
    assert torch.allclose(small, torch.ones(2, 1, 4, 4))


def test_fit_to_input_rgb_to_gray_flatten_and_reshape() -> None:
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 1] = 1.0
    assert torch.allclose(fit_to_input(rgb, (1, 2, 2)), torch.full((1, 1, 2, 2), 0.587))
    assert torch.allclose(to_grayscale(rgb), torch.full((1, 1, 2, 2), 0.587))
    assert fit_to_input(torch.rand(5, 1, 8, 8), (64,)).shape == (5, 64)
    assert fit_to_input(torch.rand(5, 64), (1, 8, 8)).shape == (5, 1, 8, 8)
    assert fit_to_input(torch.zeros(2, 3, dtype=torch.int64), (3,)).dtype == torch.float32


@pytest.mark.parametrize(
    ("shape", "target", "words"),
    [
        ((5, 10), (1, 8, 8), "10 features per sample cannot feed a model with input (1, 8, 8)"),
        ((5, 10), (12,), "10 features per sample, but the model takes 12"),
        ((5, 1, 8, 8), (10,), "have 64 values, but the model takes vectors of 10"),
        ((5, 4, 8, 8), (3, 8, 8), "cannot turn 4-channel images"),
        ((5, 3, 8, 8), (2, 8, 8), "cannot turn 3-channel images"),
    ],
)
def test_fit_to_input_errors(shape: tuple[int, ...], target: tuple[int, ...], words: str) -> None:
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fit_to_input(torch.zeros(shape), target)


def test_rotation_zero_is_identity_and_ninety_is_rot90() -> None:
    x = torch.rand(3, 2, 7, 7)
    assert torch.allclose(rotate(x, torch.zeros(3)), x, atol=1e-6)
    # +90 degrees is counter-clockwise, like torch.rot90 over (H, W)
    assert torch.allclose(rotate(x, torch.full((3,), 90.0)), torch.rot90(x, 1, (2, 3)), atol=1e-5)
    assert random_rotation(x, 0, torch.Generator().manual_seed(0)) is x


def test_random_rotation_is_per_sample_and_seeded() -> None:
    x = torch.rand(8, 1, 12, 10)
    a = random_rotation(x, 30, torch.Generator().manual_seed(1))
    b = random_rotation(x, 30, torch.Generator().manual_seed(1))
    c = random_rotation(x, 30, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    same = random_rotation(x[:1].expand(8, -1, -1, -1), 30, torch.Generator().manual_seed(1))
    assert not torch.allclose(same[0], same[1])  # each sample draws its own angle


def test_color_jitter_identity_and_semantics() -> None:
    x = torch.rand(4, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    assert color_jitter(x, 0.0, 0.0, g) is x
    assert torch.allclose(color_jitter(x, (1.0, 1.0), (1.0, 1.0), g), x)
    # factor 1 on one side leaves only the other adjustment
    assert torch.allclose(color_jitter(x, (2.0, 2.0), (1.0, 1.0), g), (x * 2).clamp(0, 1))
    # contrast 0 collapses each image to the mean of its grayscale version
    flat = color_jitter(x, (1.0, 1.0), (0.0, 0.0), g)
    means = to_grayscale(x).mean(dim=(1, 2, 3))
    assert torch.allclose(flat, means.view(-1, 1, 1, 1).expand_as(x))
    out = color_jitter(x, 0.5, 0.5, torch.Generator().manual_seed(3))
    again = color_jitter(x, 0.5, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(out, again) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, color_jitter(x, 0.5, 0.5, torch.Generator().manual_seed(4)))
    with pytest.raises(DataError, match="brightness"):
        color_jitter(x, -0.1)


def test_normalize_math() -> None:
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(normalize(x, 0.1307, 0.3081), (x - 0.1307) / 0.3081)
    per = normalize(x, (0.1, 0.2, 0.3), (1.0, 2.0, 4.0))
    assert torch.allclose(per[:, 2], (x[:, 2] - 0.3) / 4.0)
    assert torch.allclose(
        normalize(torch.ones(3, 2), (1.0, 0.0), 2.0), torch.tensor([[0, 0.5]] * 3)
    )
    with pytest.raises(DataError, match="std"):
        normalize(x, 0.0, 0.0)
    with pytest.raises(DataError, match="per-channel"):
        normalize(x, (0.1, 0.2), 1.0)


def test_augment_seed_pipeline_train_and_eval() -> None:
    x = torch.rand(6, 1, 28, 28)
    aug = Augment.seed_mnist((3, 48, 48))
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == (6, 3, 48, 48) and torch.equal(a, b)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])  # gray stays gray
    ev = aug.eval(x)
    expected = normalize(fit_to_input(x, (3, 48, 48)), 0.1307, 0.3081)
    assert torch.allclose(ev, expected) and not torch.allclose(a, ev)
    assert math.isclose(float(Augment().eval(x).sum()), float(x.sum()), rel_tol=1e-6)


def test_augment_vector_model_augments_before_flattening() -> None:
    x = torch.rand(4, 1, 8, 8)
    aug = Augment(input_shape=(64,), rotation=15, mean=0.5, std=0.5)
    assert aug(x, torch.Generator().manual_seed(0)).shape == (4, 64)
    assert torch.allclose(aug.eval(x), ((x - 0.5) / 0.5).reshape(4, 64))
    with pytest.raises(DataError, match="needs image batches"):
        Augment(rotation=10)(torch.rand(4, 5), torch.Generator())


def test_transforms_follow_the_batch_device() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        x = torch.rand(4, 1, 10, 10, device=device)
        out = Augment.seed_mnist((3, 16, 16))(x, torch.Generator().manual_seed(0))
        assert out.device.type == device and out.shape == (4, 3, 16, 16)
