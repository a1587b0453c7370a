"""Datasets: the content-keyed decode cache, train/test separation, unreadable images, every
torchvision name on a fake on-disk layout, and RandomResizedCrop against torchvision's own sampler."""

import json
import pickle
import shutil
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from adaptertune import data
from adaptertune.cli import main
from adaptertune.config import Config
from adaptertune.errors import UserError


def write_image(path, rng, size=(20, 26), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, fmt)


def image_folder(root, rng, counts=(("train", 5), ("test", 2)), classes=("cat", "dog")):
    for split, n in counts:
        for c in classes:
            for i in range(n):
                write_image(root / split / c / f"{c}.{i}.png", rng)
    return root


def load_folder(path, cache, **kw):
    return data.load(Config(dataset=f"folder:{path}", data_root=str(cache), workers=0, **kw), image_size=28)


def no_temporary_files(*roots):
    return not [p for r in roots for p in r.rglob("*") if ".tmp" in p.name]


# -- the decode cache ------------------------------------------------------------------------------

def test_a_path_with_dots_reads_the_same_splits_as_a_plain_path(tmp_path, rng):
    plain = image_folder(tmp_path / "plain" / "digits", rng)
    dotted = tmp_path / "tmp.mIXRzfwHeP" / "j.doe" / "imagenet-r.v2"
    shutil.copytree(plain, dotted)
    cache = tmp_path / "data.root"  # one cache folder for both, itself with a dot
    p_train, p_test = load_folder(plain, cache)
    d_train, d_test = load_folder(dotted, cache)
    assert (len(d_train), len(d_test)) == (len(p_train), len(p_test)) == (10, 4)
    for p, d in ((p_train, d_train), (p_test, d_test)):
        assert np.array_equal(np.asarray(p.images), np.asarray(d.images)) and torch.equal(p.labels, d.labels)
    assert d_train.source["digest"] != d_test.source["digest"] != p_test.source["digest"]
    assert len(list((cache / "adaptertune-cache").glob("*.npy"))) == 4  # no two splits share a file


def test_adding_removing_and_replacing_an_image_changes_what_the_next_run_reads(tmp_path, rng):
    root = image_folder(tmp_path / "img", rng)
    cache = tmp_path / "cache"
    first = load_folder(root, cache)[0]
    write_image(root / "train" / "dog" / "dog.9.png", rng)
    added = load_folder(root, cache)[0]
    assert len(added) == 11 and added.labels.tolist().count(1) == 6
    (root / "train" / "cat" / "cat.0.png").unlink()
    removed = load_folder(root, cache)[0]
    assert len(removed) == 10 and removed.labels.tolist().count(0) == 4
    write_image(root / "train" / "cat" / "cat.1.png", rng)  # new pixels, same name and size
    replaced = load_folder(root, cache)[0]
    assert not np.array_equal(np.asarray(replaced.images[0]), np.asarray(removed.images[0]))
    assert np.array_equal(np.asarray(replaced.images[1:]), np.asarray(removed.images[1:]))
    assert len({s.source["digest"] for s in (first, added, removed, replaced)}) == 4
    npy = sorted(p.name for p in (cache / "adaptertune-cache").glob("*train*.npy"))
    assert len(npy) == 1  # the split's earlier caches were removed, not left to fill the disk


def test_a_cache_that_does_not_match_its_record_is_decoded_again(tmp_path, rng):
    root = image_folder(tmp_path / "img", rng)
    cache = tmp_path / "cache"
    train = load_folder(root, cache)[0]
    expected = np.array(train.images)
    (npy,) = (cache / "adaptertune-cache").glob("*train*.npy")
    np.save(npy, np.zeros((3, 3, 32, 32), np.uint8))  # wrong count
    again = load_folder(root, cache)[0]
    assert np.array_equal(np.asarray(again.images), expected)
    record = npy.with_name(npy.name.replace(".npy", ".json"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "key": "0" * 64}))
    np.save(npy, np.zeros_like(expected))  # right shape, wrong pixels, record of another key
    assert np.array_equal(np.asarray(load_folder(root, cache)[0].images), expected)


def test_train_and_test_that_are_the_same_files_are_refused(tmp_path, rng):
    root = image_folder(tmp_path / "img", rng, counts=(("train", 3),))
    (root / "test").symlink_to(root / "train")
    with pytest.raises(UserError, match="in both train and test"):
        load_folder(root, tmp_path / "cache")


def test_a_truncated_png_is_one_line_naming_it_or_skipped_and_counted(tmp_path, rng, capsys):
    root = image_folder(tmp_path / "img", rng)
    bad = root / "train" / "dog" / "dog.3.png"
    bad.write_bytes(bad.read_bytes()[:200])
    cache, out = tmp_path / "cache", tmp_path / "runs"
    argv = ["train", "--dataset", f"folder:{root}", "--data-root", str(cache), "--workers", "0",
            "--backbone", "vit_nano", "--weights", "none", "--epochs", "1", "--batch-size", "4",
            "--feature-samples", "4", "--log-every", "0", "--method", "head", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "--skip-corrupt" in err
    assert no_temporary_files(cache, root)
    assert main([*argv, "--skip-corrupt"]) == 0
    (run,) = out.iterdir()
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["data"]["train"]["skipped"] == 1 and resolved["data"]["train"]["images"] == 9
    assert resolved["data"]["train"]["skipped_files"] == [str(bad)]
    assert resolved["data"]["test"]["images"] == resolved["n_test"] == 4
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert no_temporary_files(cache, root, out)
    with pytest.raises(UserError, match="dog.3.png"):  # a skipped cache does not serve a strict run
        load_folder(root, cache)


def test_in_memory_splits_record_their_size_and_digest():
    train, test = data.load(Config(dataset="synthetic", train_samples=50, test_samples=20), image_size=32)
    assert (train.source["images"], test.source["images"]) == (50, 20)
    assert train.source["digest"] != test.source["digest"]
    assert data.load(Config(dataset="synthetic", train_samples=50, test_samples=20), 32)[0].source == train.source


# -- every torchvision name, on a fake layout in the place torchvision reads it from ---------------

def jpgs(rng, paths):
    for p in paths:
        write_image(p, rng, fmt="JPEG")


def lay_out(name, root, rng, monkeypatch):
    """Write a few fake images of `name` in torchvision's layout; returns (n_train, n_test)."""
    import torchvision.datasets as tvd
    from scipy.io import savemat

    if name in ("cifar10", "cifar100"):  # pickled batches, checked against md5 sums: patched out
        monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)
        ten = name == "cifar10"
        base = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
        base.mkdir(parents=True)
        key = "labels" if ten else "fine_labels"
        batches = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
        for f, n in [(b, 2) for b in batches] + [("test_batch" if ten else "test", 3)]:
            batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), key: [0, 1, 1][:n]}
            (base / f).write_bytes(pickle.dumps(batch))
        meta = {"label_names": ["a", "b"]} if ten else {"fine_label_names": ["a", "b"]}
        (base / ("batches.meta" if ten else "meta")).write_bytes(pickle.dumps(meta))
        return 2 * len(batches), 3
    if name == "svhn":  # .mat files, checked against md5 sums: patched out
        monkeypatch.setattr(tvd.svhn, "check_integrity", lambda *a, **k: True)
        root.mkdir(parents=True)
        for split, n in (("train", 4), ("test", 3)):
            savemat(root / f"{split}_32x32.mat", {"X": rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                                                  "y": np.array([[10], [1], [2], [3]][:n])})
        return 4, 3
    if name == "pets":
        base = root / "oxford-iiit-pet"
        (base / "annotations").mkdir(parents=True)
        ids = {"trainval": ["Abyssinian_1", "Abyssinian_2", "beagle_1"], "test": ["Abyssinian_3", "beagle_2"]}
        for split, names in ids.items():
            (base / "annotations" / f"{split}.txt").write_text(
                "".join(f"{i} {1 if i.startswith('A') else 2} 1 1\n" for i in names))
            jpgs(rng, [base / "images" / f"{i}.jpg" for i in names])
        return 3, 2
    if name == "food101":
        base = root / "food-101"
        (base / "meta").mkdir(parents=True)
        for split, k in (("train", (1, 2, 3)), ("test", (4,))):
            meta = {c: [f"{c}/{i}" for i in k] for c in ("apple_pie", "ramen")}
            (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
            jpgs(rng, [base / "images" / f"{f}.jpg" for v in meta.values() for f in v])
        return 6, 2
    if name == "flowers102":  # .mat files, checked against md5 sums: patched out
        monkeypatch.setattr(tvd.flowers102, "check_integrity", lambda *a, **k: True)
        base = root / "flowers-102"
        jpgs(rng, [base / "jpg" / f"image_{i:05d}.jpg" for i in range(1, 8)])
        savemat(base / "imagelabels.mat", {"labels": np.array([1, 2, 1, 2, 1, 2, 1])})
        savemat(base / "setid.mat", {"trnid": np.array([1, 2, 3]), "valid": np.array([4, 5]),
                                     "tstid": np.array([6, 7])})
        return 3, 2
    if name == "aircraft":
        base = root / "fgvc-aircraft-2013b" / "data"
        base.mkdir(parents=True)
        (base / "variants.txt").write_text("707-320\nA320\n")
        for split, ids in (("trainval", ["0001", "0002", "0003"]), ("test", ["0004", "0005"])):
            (base / f"images_variant_{split}.txt").write_text(
                "".join(f"{i} {'A320' if int(i) % 2 else '707-320'}\n" for i in ids))
            jpgs(rng, [base / "images" / f"{i}.jpg" for i in ids])
        return 3, 2
    if name == "dtd":
        base = root / "dtd" / "dtd"
        (base / "labels").mkdir(parents=True)
        for split, ids in (("train", [1, 2]), ("test", [3])):
            files = [f"{c}/{c}_{i:04d}.jpg" for c in ("banded", "woven") for i in ids]
            (base / "labels" / f"{split}1.txt").write_text("".join(f + "\n" for f in files))
            jpgs(rng, [base / "images" / f for f in files])
        return 4, 2
    if name == "eurosat":  # one split: our fixed 80/20 cut
        jpgs(rng, [root / "eurosat" / "2750" / c / f"{c}_{i}.jpg" for c in ("Forest", "River") for i in range(5)])
        return 8, 2
    raise AssertionError(f"no fake layout for {name}: add one so that it is tested")


@pytest.mark.parametrize("name", list(data.TORCHVISION))
def test_every_torchvision_name_loads_from_its_on_disk_layout(name, tmp_path, rng, monkeypatch):
    def offline(*a, **k):
        raise OSError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    n_train, n_test = lay_out(name, tmp_path / "root", rng, monkeypatch)
    config = Config(dataset=name, data_root=str(tmp_path / "root"), workers=0)
    train, test = data.load(config, image_size=28)
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.images.shape[1:] == test.images.shape[1:] and str(train.images.dtype).endswith("uint8")
    assert train.num_classes == test.num_classes >= 2 and set(train.labels.tolist()) >= {0, 1}
    assert train.source["digest"] != test.source["digest"]
    assert (train.source["images"], test.source["images"]) == (n_train, n_test)
    x, y = train.batch(torch.arange(len(train)), "cpu")
    assert x.float().std() > 0 and torch.equal(y, train.labels)
    npy = sorted((tmp_path / "root" / "adaptertune-cache").glob("*.npy"))
    assert len(npy) == (0 if name in ("cifar10", "cifar100", "svhn") else 1 if name == "eurosat" else 2)
    again = data.load(config, image_size=28)  # the second run reads the verified cache
    assert again[0].source == train.source and np.array_equal(np.asarray(again[1].images), np.asarray(test.images))


# -- RandomResizedCrop ---------------------------------------------------------------------------

def boxes(theta, height, width):
    """(top, left, h, w) in pixels, and the flip, of `random_resized_crop_boxes`' affine maps."""
    theta = theta.double()
    w, h = theta[:, 0, 0].abs() * width, theta[:, 1, 1] * height
    left, top = (theta[:, 0, 2] + 1) * width / 2 - w / 2, (theta[:, 1, 2] + 1) * height / 2 - h / 2
    return torch.stack([top, left, h, w], 1).numpy(), (theta[:, 0, 0] < 0).numpy()


@pytest.mark.parametrize("height,width", [(256, 256), (40, 200)])  # square; wide (the fallback is common)
def test_crop_boxes_are_drawn_as_torchvision_random_resized_crop_draws_them(height, width):
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    n = 10_000
    torch.manual_seed(0)
    img = torch.empty(3, height, width)
    ref = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], float)
    ours, flip = boxes(data.random_resized_crop_boxes(n, height, width, torch.Generator().manual_seed(0), "cpu"),
                       height, width)
    np.testing.assert_allclose(ours, np.round(ours), atol=1e-3)  # whole pixels, as torchvision
    ours = np.round(ours)
    assert (ours[:, :2] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    area = {k: b[:, 2] * b[:, 3] / (height * width) for k, b in (("ref", ref), ("ours", ours))}
    log_ratio = {k: np.log(b[:, 3] / b[:, 2]) for k, b in (("ref", ref), ("ours", ours))}
    centre = {k: (b[:, 1] + b[:, 3] / 2) / width for k, b in (("ref", ref), ("ours", ours))}
    for stat in (area, log_ratio, centre):
        assert ks_2samp(stat["ref"], stat["ours"]).pvalue > 1e-3
        np.testing.assert_allclose(np.quantile(stat["ours"], [0.1, 0.5, 0.9]),
                                   np.quantile(stat["ref"], [0.1, 0.5, 0.9]), atol=0.02)
    fallback = {k: np.mean((b[:, 2] == height) & (b[:, 3] == round(height * 4 / 3))) for k, b in
                (("ref", ref), ("ours", ours))}  # the central crop at the clamped ratio
    assert abs(fallback["ours"] - fallback["ref"]) < 0.025
    assert abs(flip.mean() - 0.5) < 0.02


def test_training_transform_uses_the_drawn_box():
    x = torch.arange(64, dtype=torch.float32).repeat(8, 1).T.reshape(1, 1, 64, 8).expand(3, 3, 64, 8)
    x = (x * 3).to(torch.uint8).contiguous()  # rows of constant value 3*row, a tall image
    g = torch.Generator().manual_seed(5)
    theta = data.random_resized_crop_boxes(3, 64, 8, torch.Generator().manual_seed(5), "cpu")
    y = data.transform(x, 16, (0, 0, 0), (1 / 255,) * 3, train=True, generator=g)
    top, _, h, _ = boxes(theta, 64, 8)[0].T
    rows = y[:, 0, :, 0].numpy() / 3  # the input row each output row samples: they span the box
    assert np.all(np.abs(rows[:, 0] - top) < h / 16 + 1) and np.all(np.abs(rows[:, -1] - (top + h)) < h / 16 + 1)
