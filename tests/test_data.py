"""Datasets: the embedded shapes, torchvision's sets and image folders on small files in the official
formats (written here), the Debian Fashion-MNIST files when installed; never the network."""

import gzip
import logging
from pathlib import Path

import pytest
import torch

from regx import data as D
from regx.data import folders, tvsets
from regx.data.synthetic import make_shapes
from tests.conftest import load, write_cifar, write_images, write_mnist_family, write_smooth_jpegs

# --- shapes ---------------------------------------------------------------------------------------


def test_shapes_are_seeded_balanced_and_varied():
    from regx.data.synthetic import _made_shapes

    x1, y1 = make_shapes(500, 32, 10, 3, seed=3)
    x1[0], y1[0] = 0, 9  # a caller's copy: what it does to it reaches no other caller
    x2, y2 = make_shapes(500, 32, 10, 3, seed=3)  # made once per process
    x0, y0 = _made_shapes.__wrapped__(500, 32, 10, 3, seed=3)  # made again, from the seed alone
    x3, _ = make_shapes(500, 32, 10, 3, seed=4)
    assert x2.dtype == torch.uint8 and x2.shape == (500, 3, 32, 32)
    assert torch.equal(x0, x2) and torch.equal(y0, y2) and not torch.equal(x1, x2)
    x1, y1 = x2, y2
    assert not torch.equal(x1, x3)
    assert set(y1.tolist()) == set(range(10))
    assert len({tuple(img.flatten()[:64].tolist()) for img in x1}) == 500  # no two images alike
    gray, _ = make_shapes(10, 16, 4, 1, seed=0)
    assert gray.shape == (10, 1, 16, 16)


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([0] * 80 + [1] * 20)
    g = torch.Generator().manual_seed(0)
    picked, rest = D.stratified_split(y, 10, g)
    assert len(picked) == 10 and len(rest) == 90
    assert set(picked.tolist()).isdisjoint(rest.tolist())
    assert (y[picked] == 0).sum() == 8 and (y[picked] == 1).sum() == 2
    again, _ = D.stratified_split(y, 10, torch.Generator().manual_seed(0))
    assert torch.equal(picked, again)


def test_load_shapes_carves_validation_and_subsets():
    d = load("shapes", image_size=16, n_train=400, n_test=50, val_fraction=0.25, train_size=100, seed=1)
    assert (len(d.train), len(d.val), len(d.test)) == (100, 100, 50)
    assert d.num_classes == 10 and d.channels == 3 and d.image_size == 16
    assert len(d.mean) == len(d.std) == 3 and all(0 < s < 1 for s in d.std)
    counts = torch.bincount(d.train.y, minlength=10)
    assert counts.max() - counts.min() <= 3  # stratified


def test_batches_follow_the_order_and_drop_a_single_last_image():
    split = D.Split(y=torch.arange(129), x=torch.arange(129, dtype=torch.uint8).view(129, 1, 1, 1))
    order = torch.randperm(129, generator=torch.Generator().manual_seed(0))
    batches = list(D.iterate(split, 64, order=order, drop_single=True))
    assert [len(b[1]) for b in batches] == [64, 64]
    assert torch.equal(torch.cat([b[1] for b in batches]), order[:128])
    resumed = list(D.iterate(split, 64, order=order, start=1, drop_single=True))
    assert torch.equal(resumed[0][1], batches[1][1])


# --- torchvision sets in their official formats -----------------------------------------------


@pytest.mark.parametrize(
    "name,folder,cls", [("mnist", "MNIST/raw", "MNIST"), ("fashion_mnist", "FashionMNIST/raw", "FashionMNIST")]
)
def test_mnist_family_reads_torchvisions_files_as_torchvision_does_without_importing_it(
    tmp_path, monkeypatch, name, folder, cls
):
    """The IDX files are read directly, without importing torchvision: the same images, labels and class
    names, in both splits, as torchvision's dataset class gives for the same files (the reference)."""
    import sys

    import torchvision.datasets as tvd

    write_mnist_family(tmp_path / folder)
    reference = getattr(tvd, cls)(str(tmp_path), train=True, download=False)
    reference_test = getattr(tvd, cls)(str(tmp_path), train=False, download=False)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torchvision.datasets", None)  # importing it now fails
        d = load(name, root=str(tmp_path), download=False, val_fraction=0.1)
        d32 = load(name, root=str(tmp_path), download=False, image_size=32)
    assert (len(d.train), len(d.val), len(d.test)) == (54, 6, 20)
    assert d.train.x.shape[1:] == (1, 28, 28) and d.channels == 1 and d.num_classes == 10
    assert d.classes == reference.classes
    ours = sorted(
        (int(y), x.numpy().tobytes()) for s in (d.train, d.val) for x, y in zip(s.x, s.y)
    )  # shuffled by the split
    theirs = sorted((int(y), x.numpy().tobytes()) for x, y in zip(reference.data, reference.targets))
    assert ours == theirs
    assert torch.equal(d.test.x.squeeze(1), reference_test.data) and torch.equal(d.test.y, reference_test.targets)
    assert d32.train.x.shape[1:] == (1, 32, 32) and d32.image_size == 32


def test_fashion_mnist_reads_gzipped_idx_files_debian_style(tmp_path):
    write_mnist_family(tmp_path, compress=True)  # as Debian's dataset-fashion-mnist lays them out
    d = load("fashion_mnist", root=str(tmp_path), download=False)
    assert len(d.train) + len(d.val) == 60 and len(d.test) == 20
    assert d.classes[0] == "T-shirt/top"


def test_truncated_idx_is_reported(tmp_path):
    write_mnist_family(tmp_path, compress=True)
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(D.DataError, match="truncated"):
        load("fashion_mnist", root=str(tmp_path), download=False)


@pytest.mark.parametrize(
    "name,folder,cls", [("cifar10", "cifar-10-batches-py", "CIFAR10"), ("cifar100", "cifar-100-python", "CIFAR100")]
)
def test_cifar_through_torchvision(tmp_path, monkeypatch, name, folder, cls):
    import torchvision.datasets as tvd

    # torchvision checks each file's md5 against the real release; these small files are in the same
    # format but not the same bytes, so that one check is switched off.
    monkeypatch.setattr(getattr(tvd, cls), "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)
    write_cifar(tmp_path / folder, name)
    d = load(name, root=str(tmp_path), download=False, val_fraction=0.2)
    n_train = 50 if name == "cifar10" else 10
    assert len(d.train) + len(d.val) == n_train and len(d.test) == 10
    assert d.train.x.shape[1:] == (3, 32, 32) and d.channels == 3
    assert d.num_classes == (10 if name == "cifar10" else 100)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_files_say_where_to_put_which(tmp_path, monkeypatch, name):
    monkeypatch.setitem(tvsets._TV, name, (*tvsets._TV[name][:3], []))  # not the system-wide Debian copy
    with pytest.raises(D.DataError) as err:
        load(name, root=str(tmp_path), download=False)
    text = str(err.value)
    assert str(tmp_path.resolve()) in text and "data.download=false" in text
    assert ("train-images-idx3-ubyte" in text) or ("data_batch_1" in text) or ("train, test, meta" in text)


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_from_debian(tmp_path):
    d = load("fashion_mnist", root=str(tmp_path), download=False)
    assert len(d.train) + len(d.val) == 60000 and len(d.test) == 10000
    assert torch.bincount(d.test.y).tolist() == [1000] * 10


@pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_a_streamed_splits_stats_sample_measures_real_images_as_the_whole_set_does(tmp_path):
    x = load("fashion_mnist", root=str(tmp_path), download=False, val_fraction=0.01).train.x.double() / 255
    sample = x[D.core.stats_sample(len(x))]
    assert len(sample) == D.core.STATS_SAMPLE < len(x)
    # a mean of 4,096 images has a standard error of about 0.0016 here: 0.005 is three of them
    assert abs(sample.mean() - x.mean()) < 0.005 and abs(sample.std() - x.std()) < 0.005


# --- image folders --------------------------------------------------------------------------------


def test_imagefolder_with_splits_and_cache(tmp_path, monkeypatch):
    for split in ("train", "val", "test"):
        write_images(tmp_path / "imgs" / split, per_class=4 if split == "train" else 2)
    kw = dict(name="imagefolder", root=str(tmp_path / "cache"), path=str(tmp_path / "imgs"), image_size=24, workers=0)
    d = load(**kw)
    assert (len(d.train), len(d.val), len(d.test)) == (12, 6, 6)
    assert d.classes == ["cat", "dog", "emu"] and d.train.x.shape[1:] == (3, 24, 24)
    assert len(list((tmp_path / "cache" / "cache").glob("imagefolder-*.pt"))) == 1
    monkeypatch.setattr(folders, "decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = load(**kw)  # from the cache: nothing decoded
    assert torch.equal(again.train.x, d.train.x)


def test_flat_imagefolder_carves_validation(tmp_path):
    write_images(tmp_path / "imgs", per_class=10)
    d = load("imagefolder", root=str(tmp_path), path=str(tmp_path / "imgs"), image_size=16, val_fraction=0.2, workers=0)
    assert (len(d.train), len(d.val), d.test) == (24, 6, None)


def test_streaming_gives_the_same_batches(tmp_path):
    write_images(tmp_path / "imgs", per_class=5)
    kw = dict(name="imagefolder", root=str(tmp_path), path=str(tmp_path / "imgs"), image_size=16, workers=0)
    mem, streamed = load(**kw), load(stream=True, **kw)
    assert mem.train.x is not None and streamed.streaming
    order = torch.randperm(len(mem.train), generator=torch.Generator().manual_seed(0))
    for (xa, ya), (xb, yb) in zip(D.iterate(mem.train, 4, order=order), D.iterate(streamed.train, 4, order=order)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_bad_images_are_named_all_at_once_or_skipped(tmp_path):
    write_images(tmp_path / "imgs", per_class=4)
    good = (tmp_path / "imgs" / "cat" / "0.jpg").read_bytes()
    (tmp_path / "imgs" / "cat" / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "imgs" / "dog" / "empty.png").write_bytes(b"")
    (tmp_path / "imgs" / "emu" / "text.png").write_text("not an image")
    kw = dict(name="imagefolder", root=str(tmp_path), path=str(tmp_path / "imgs"), image_size=16, workers=0)
    with pytest.raises(D.DataError) as err:
        load(**kw)
    for bad in ("trunc.jpg", "empty.png", "text.png"):
        assert bad in str(err.value)
    d = load(on_bad_image="skip", **kw)
    assert len(d.train) + len(d.val) == 12


def test_a_streamed_folder_reads_headers_first_and_its_batches_name_a_file_that_fails_to_decode(tmp_path):
    """A streamed folder decoded every file before its first step, a whole epoch of decoding at scale:
    now only each header is read then (test/'s files excepted: test_failures), and a file damaged past
    its header is named by the batch that meets it: an error, or with on_bad_image=skip left out."""
    write_images(tmp_path / "imgs", per_class=4)
    good = (tmp_path / "imgs" / "cat" / "0.jpg").read_bytes()
    (tmp_path / "imgs" / "cat" / "trunc.jpg").write_bytes(good[:-100])  # cut in its image data, after the header
    (tmp_path / "imgs" / "dog" / "text.jpg").write_text("not an image")
    kw = dict(name="imagefolder", root=str(tmp_path), path=str(tmp_path / "imgs"), image_size=16, workers=0,
              stream=True, mean=[0.5] * 3, std=[0.5] * 3)  # fmt: skip
    with pytest.raises(D.DataError, match="1 unreadable image.*text.jpg \\(not an image Pillow can identify\\)"):
        load(**kw)  # from the header, before training
    (tmp_path / "imgs" / "dog" / "text.jpg").unlink()
    d = load(**kw)  # the truncated JPEG's header is sound
    with pytest.raises(D.DataError, match=f"cannot decode {tmp_path}/imgs/cat/trunc.jpg \\(truncated\\)"):
        for part in (d.train, d.val):
            list(D.iterate(part, 4))
    d = load(on_bad_image="skip", **kw)
    warned = logging.Handler(logging.WARNING)
    warned.emit = lambda record: said.append(record.getMessage())
    said: list[str] = []
    D.core.log.addHandler(warned)
    try:
        for _ in range(2):  # named once, the first time a batch meets it
            n = sum(len(y) for part in (d.train, d.val) for _, y in D.iterate(part, 4))
            assert n == len(d.train) + len(d.val) - 1 == 12
    finally:
        D.core.log.removeHandler(warned)
    trunc = tmp_path / "imgs" / "cat" / "trunc.jpg"
    assert said == [f"imagefolder: skipping 1 unreadable image(s) (1 so far): {trunc} (truncated)"]


def test_a_streamed_splits_channel_statistics_come_from_a_sample(tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", per_class=10)
    kw = dict(name="imagefolder", root=str(tmp_path), path=str(tmp_path / "imgs"), image_size=16, workers=0)
    whole = load(**kw)  # in memory: every image
    decoded = []
    real = folders.FileDataset.__getitem__
    monkeypatch.setattr(folders.FileDataset, "__getitem__", lambda self, i: decoded.append(i) or real(self, i))
    monkeypatch.setattr(D.core, "STATS_SAMPLE", 12)
    sampled = load(stream=True, **kw)
    assert len(decoded) == 12 < len(sampled.train) == 27
    assert sampled.mean != whole.mean and sampled.mean == pytest.approx(whole.mean, abs=0.05)
    assert sampled.std == pytest.approx(whole.std, abs=0.05)


def test_the_training_split_is_counted_without_loading_it(tmp_path, monkeypatch):
    from regx import config
    from regx.data import load_config, train_count

    write_images(tmp_path / "flat", per_class=10)
    for split in ("train", "val"):
        write_images(tmp_path / "split" / split, per_class=4)
    cases = [
        ["data.n_train=500"],
        ["data.n_train=500", "data.train_size=100"],
        ["data.n_train=500", "data.val_fraction=0.3"],
        ["data=imagefolder", f"data.path={tmp_path / 'flat'}", "data.image_size=16", "data.workers=0"],
        ["data=imagefolder", f"data.path={tmp_path / 'split'}", "data.image_size=16", "data.workers=0"],
    ]
    for overrides in cases:
        cfg = config.compose([*overrides, f"data.root={tmp_path}"])
        assert train_count(cfg.data) == len(load_config(cfg.data).train), overrides
    assert train_count(config.compose(["data=cifar10"]).data) == 45000
    monkeypatch.setattr("regx.data.core.load_data", lambda **kw: pytest.fail("loaded the data"))
    assert train_count(config.compose(["data=fashion_mnist", "data.train_size=1000"]).data) == 1000


def test_streaming_leaves_the_global_random_stream_alone(tmp_path):
    """Each DataLoader iterator draws its workers' base seed; from torch's global generator (the one
    dropout draws from) that made a mid-epoch resume of a streamed run with dropout differ."""
    write_images(tmp_path / "imgs", per_class=5)
    kw = dict(name="imagefolder", root=str(tmp_path), path=str(tmp_path / "imgs"), image_size=16, workers=0)
    streamed = load(stream=True, **kw)
    for workers in (0, 1):
        before = torch.get_rng_state()
        for start in (0, 1):
            list(D.iterate(streamed.train, 4, workers=workers, start=start))
        assert torch.equal(torch.get_rng_state(), before), workers


def test_a_class_folder_linked_from_outside_data_path_is_named(tmp_path, caplog):
    """On main a class folder that linked to a system folder was scanned without a word (4,970 images)."""
    write_images(tmp_path / "imgs", per_class=4)
    write_images(tmp_path / "elsewhere", classes=("owl",), per_class=5)
    (tmp_path / "imgs" / "owl").symlink_to(tmp_path / "elsewhere" / "owl", target_is_directory=True)
    (tmp_path / "imgs" / "cat2").symlink_to(tmp_path / "imgs" / "cat", target_is_directory=True)  # inside: fine
    with caplog.at_level("WARNING", logger="regx"):
        items, classes = folders.scan_folder(str(tmp_path / "imgs"))
    assert "owl" in classes and len(items["train"]) == 4 * 4 + 5
    warned = [r.getMessage() for r in caplog.records if "outside data.path" in r.getMessage()]
    assert warned == [
        f"imagefolder: {tmp_path / 'imgs' / 'owl'} is a link to {tmp_path / 'elsewhere' / 'owl'}, outside data.path: "
        "its 5 images are read as class 'owl'"
    ]


@pytest.mark.parametrize("how", ["cpu", "device"])
def test_each_decoder_makes_the_pixels_pillow_makes(tmp_path, how):
    """data.decode=cpu and =device (here the device is the CPU) give Pillow's images to a level or two
    (the same libjpeg; Pillow's bilinear resize and torchvision's antialiased one), and the files a
    tensor decoder would get wrong (rotated by EXIF, not JPEG) go through Pillow, exactly."""
    paths = write_smooth_jpegs(tmp_path / "imgs")
    labels = torch.arange(len(paths))
    pil = torch.stack([x for x, _, _ in folders.FileDataset(paths, labels, 24)])
    split = folders.file_split(paths, labels, 24, how)
    (x, y), *_ = list(D.iterate(split, len(paths), workers=0))
    assert x.shape == pil.shape and x.dtype == torch.uint8 and torch.equal(y, labels)
    diff = (x.int() - pil.int()).abs()
    assert diff.float().mean() < 0.5 and diff.max() <= 4  # measured: 0.17 and 3, TorchCodec and torchvision alike
    assert torch.equal(x[-2:], pil[-2:])  # rotated.jpg and lossless.png: Pillow's own
    if how == "device":
        items = [split.files[i][0] for i in range(len(paths))]
        assert [t.dim() for t in items] == [1, 1, 1, 1, 3, 3]  # the workers only read the four plain JPEGs


def test_a_jpeg_that_does_not_decode_on_the_device_is_named(tmp_path):
    paths = write_smooth_jpegs(tmp_path / "imgs")[:2]
    good = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(good[:200])  # its header reads, its pixels do not
    split = folders.file_split(paths, torch.arange(2), 24, "device")
    with pytest.raises(D.DataError, match=r"cannot decode .*rgb1\.jpg .*regx check-data"):
        list(D.iterate(split, 2, workers=0))


def test_a_batch_the_device_decoder_fails_and_the_cpu_decodes_says_so(tmp_path, monkeypatch):
    paths = write_smooth_jpegs(tmp_path / "imgs")[:2]
    cpu = folders.jpeg_decoder()

    def flaky(data, device):  # a device decoder that fails on whole batches only
        if len(data) > 1:
            raise RuntimeError("nvjpeg status 6")
        return cpu(data, device)

    monkeypatch.setattr(folders, "jpeg_decoder", lambda: flaky)
    split = folders.file_split(paths, torch.arange(2), 24, "device")
    with pytest.raises(D.DataError, match=r"JPEG decoder failed on a batch the CPU decodes \(nvjpeg status 6\); data"):
        list(D.iterate(split, 2, workers=0))


def test_jpegs_decode_with_torchcodec_and_without_it_with_torchvision(tmp_path, monkeypatch):
    """TorchCodec's decoder where installed (regx[decode]; torchvision's are deprecated since 0.29),
    else torchvision's, which makes the same pixels."""
    raw = torch.frombuffer(bytearray(Path(write_smooth_jpegs(tmp_path / "imgs")[0]).read_bytes()), dtype=torch.uint8)
    pytest.importorskip("torchcodec")
    folders.jpeg_decoder.cache_clear()  # chosen once per process
    codec = folders.jpeg_decoder()
    monkeypatch.setitem(__import__("sys").modules, "torchcodec.decoders", None)  # as if not installed
    folders.jpeg_decoder.cache_clear()
    fallback = folders.jpeg_decoder()
    folders.jpeg_decoder.cache_clear()
    assert (codec.library, fallback.library) == ("TorchCodec", "torchvision")
    assert torch.equal(codec([raw], "cpu")[0], fallback([raw], "cpu")[0])
