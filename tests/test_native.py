"""Native dataset layouts: Tiny-ImageNet, ImageNet-R and VTAB-1k as they unpack, written here as tiny
trees (a few images per class), read through data.load and the decode cache; the VTAB-1k study file."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptertune import data, native, runs
from adaptertune.analysis import groups, report
from adaptertune.cli import main
from adaptertune.config import Config
from adaptertune.errors import UserError

WNIDS = ["n01443537", "n01629819", "n01641577"]
WORDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander",
         "n01641577": "bullfrog, Rana catesbeiana"}


def write_image(path, rng, size=(12, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def load(name, root, **kw):
    return data.load(Config(dataset=name, data_root=str(root), workers=0, **kw), image_size=28)


# -- Tiny-ImageNet ---------------------------------------------------------------------------------

def tiny_imagenet(root, rng, train=4, val=2):
    """tiny-imagenet-200 as it unpacks: train/<wnid>/images, val/images + val_annotations.txt, words."""
    root = root / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WORDS.items()) + "n00000000\tunused\n")
    for w in WNIDS:
        for i in range(train):
            write_image(root / "train" / w / "images" / f"{w}_{i}.JPEG", rng)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for j in range(val * len(WNIDS)):
        write_image(root / "val" / "images" / f"val_{j}.JPEG", rng)
        lines.append(f"val_{j}.JPEG\t{WNIDS[(j * 2) % 3]}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    write_image(root / "test" / "images" / "test_0.JPEG", rng)  # unlabelled: not read
    return root


@pytest.fixture
def tiny_sizes(monkeypatch):
    monkeypatch.setattr(native, "TINY_IMAGENET_SIZES", {"train": 12, "test": 6, "classes": 3})


def test_tiny_imagenet_reads_train_folders_and_the_annotated_val_split(tmp_path, rng, tiny_sizes):
    root = tiny_imagenet(tmp_path, rng)
    train, test = load("tiny-imagenet", tmp_path)  # --data-root the folder holding tiny-imagenet-200
    assert (len(train), len(test), train.num_classes) == (12, 6, 3)
    assert sorted(train.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert test.labels.tolist() == [0, 2, 1, 0, 2, 1]  # from val_annotations.txt, line by line
    assert train.source["classes"] == WNIDS
    assert train.source["class_names"] == [WORDS[w] for w in WNIDS] and train.source["checked_sizes"]
    assert (train.source["split"], test.source["split"]) == ("tiny-imagenet-train", "tiny-imagenet-val")
    again, _ = load("tiny-imagenet", root)  # or the unpacked folder itself
    assert np.array_equal(np.asarray(again.images), np.asarray(train.images))


def test_half_unpacked_tiny_imagenet_is_one_line_naming_what_is_missing(tmp_path, rng, tiny_sizes, capsys):
    root = tiny_imagenet(tmp_path, rng)
    (root / "val" / "images" / "val_3.JPEG").unlink()
    argv = ["train", "--dataset", "tiny-imagenet", "--data-root", str(root), "--backbone", "vit_nano",
            "--weights", "none", "--out", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root / "val" / "images" / "val_3.JPEG") in err and "1 of 6" in err
    for p in (root / "train" / WNIDS[1] / "images").iterdir():
        p.unlink()
    with pytest.raises(UserError, match=f"expected {root}/train/{WNIDS[1]}/images"):
        load("tiny-imagenet", root)
    with pytest.raises(UserError, match="expected .*/train/<wnid>/images/\\*.JPEG"):
        load("tiny-imagenet", tmp_path / "elsewhere")


def test_tiny_imagenet_is_checked_against_its_published_sizes(tmp_path, rng):
    root = tiny_imagenet(tmp_path, rng)
    with pytest.raises(UserError, match="expected 200 classes .* found 3"):
        load("tiny-imagenet", root)
    with pytest.raises(UserError, match="expected 7 validation images in .*val_annotations.txt, found 6"):
        native.tiny_imagenet(root, sizes={"train": 12, "test": 7, "classes": 3})


# -- ImageNet-R ------------------------------------------------------------------------------------

def imagenet_r(root, rng, counts=(6, 4, 5)):
    for w, n in zip(WNIDS, counts):
        for i in range(n):
            write_image(root / w / f"{'art' if i % 2 else 'cartoon'}_{i}.{'png' if i % 3 else 'jpg'}", rng)
    (root / "README.txt").write_text("".join(f"{w} {WORDS[w].split(',')[0]}\n" for w in WNIDS))
    return root


def test_imagenet_r_test_split_is_deterministic_by_seed_disjoint_and_a_fifth():
    a, b = native.draw_test_split(1000, seed=0), native.draw_test_split(1000, seed=0)
    other = native.draw_test_split(1000, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], other[1])
    train, test = a
    assert len(test) == 200 and len(train) == 800
    assert not set(train) & set(test) and sorted([*train, *test]) == list(range(1000))


def test_imagenet_r_loads_with_its_seeded_split_saved_and_checked(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(native, "IMAGENET_R_SIZES", {"images": 15, "classes": 3})
    root = imagenet_r(tmp_path / "imagenet-r", rng)
    train, test = load("imagenet-r", root)  # the cache folder it writes inside root is no class
    assert (len(train), len(test), train.num_classes) == (12, 3, 3)
    assert train.source["classes"] == WNIDS
    assert train.source["class_names"] == ["goldfish", "European fire salamander", "bullfrog"]  # from README.txt
    split_file = Path(test.source["split_file"])
    saved = json.loads(split_file.read_text())
    assert saved["seed"] == native.SPLIT_SEED == test.source["split_seed"] and len(saved["test"]) == 3
    listed = native.imagenet_r(root, split_file.parent, sizes=None)
    rel = lambda paths: {str(Path(p).relative_to(root)) for p in paths}  # noqa: E731
    assert rel(listed.test[0]) == set(saved["test"]) and not rel(listed.train[0]) & set(saved["test"])
    assert rel(listed.train[0]) | rel(listed.test[0]) == {str(p.relative_to(root)) for p in root.glob("n*/*")}
    assert all(WNIDS[y] == Path(p).parent.name for p, y in zip(*listed.test))
    train2, test2 = load("imagenet-r", root)  # the saved split is read back: same images
    assert test2.source["digest"] == test.source["digest"] and train2.source["digest"] == train.source["digest"]
    write_image(root / WNIDS[0] / "extra.jpg", rng)
    monkeypatch.setattr(native, "IMAGENET_R_SIZES", {"images": 16, "classes": 3})
    with pytest.raises(UserError, match=f"not the folder the test split in {split_file} was drawn from"):
        load("imagenet-r", root)
    monkeypatch.setattr(native, "IMAGENET_R_SIZES", {"images": 30_000, "classes": 3})
    with pytest.raises(UserError, match="expected 30,000 images .* found 16"):
        load("imagenet-r", root)


def test_missing_imagenet_r_names_the_expected_class_folders(tmp_path):
    (tmp_path / "imagenet-r").mkdir()
    with pytest.raises(UserError, match=f"expected {tmp_path}/imagenet-r/<wnid>/\\*.jpg"):
        load("imagenet-r", tmp_path)


# -- VTAB-1k ---------------------------------------------------------------------------------------

def vtab(root, rng, task="dtd", sizes=(8, 2, 5), classes=3):
    """<root>/<task>/images/* with train800/val200/train800val200/test lists of `sizes` lines."""
    folder = root / task
    n_train, n_val, n_test = sizes
    rows = []
    for i in range(n_train + n_val + n_test):
        write_image(folder / "images" / f"{i:04d}.jpg", rng)
        rows.append(f"images/{i:04d}.jpg {i % classes}")
    train, val, test = rows[:n_train], rows[n_train:n_train + n_val], rows[n_train + n_val:]
    for name, lines in (("train800", train), ("val200", val), ("train800val200", val + train), ("test", test)):
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def vtab_sizes(monkeypatch):
    monkeypatch.setattr(native, "VTAB_SIZES", {"train800.txt": 8, "val200.txt": 2, "train800val200.txt": 10})


def test_vtab_lists_give_the_protocol_splits_in_both_phases(tmp_path, rng, vtab_sizes):
    vtab(tmp_path / "vtab-1k", rng)
    final_train, final_test = load("vtab:dtd", tmp_path)
    select_train, select_test = load("vtab:dtd:train800", tmp_path / "vtab-1k")
    assert (len(final_train), len(final_test), final_train.num_classes) == (10, 5, 47)  # dtd: 47 classes
    assert final_train.source["val_rows"] == [10, 10] and "final" in final_train.source["protocol"]
    assert select_train.source["val_rows"] == [8, 10] and "model selection" in select_train.source["protocol"]
    assert final_train.source["digest"] == select_train.source["digest"]  # one decode of the same 1,000 images
    assert final_train.labels.tolist() == [i % 3 for i in range(10)]  # train800 rows, then val200's
    assert final_test.labels.tolist() == [i % 3 for i in range(10, 15)] == select_test.labels.tolist()
    assert Config(dataset="vtab:dtd:train800").run_id.startswith("vtab-dtd-train800-")


def test_vtab_runs_select_on_val200_or_train_on_all_1000(tmp_path, rng, vtab_sizes):
    vtab(tmp_path, rng)
    common = ["--data-root", str(tmp_path), "--backbone", "vit_nano", "--weights", "none", "--method", "head",
              "--epochs", "2", "--batch-size", "4", "--feature-samples", "4", "--log-every", "0", "--workers", "0",
              "--out", str(tmp_path / "runs")]
    for dataset, n_val in (("vtab:dtd:train800", 2), ("vtab:dtd", 0)):
        assert main(["train", "--dataset", dataset, *common]) == 0
        prefix = Config(dataset=dataset, backbone="vit_nano", method="head").run_id.rsplit("-", 2)[0]
        (run,) = (tmp_path / "runs").glob(f"{prefix}-????????-s0")  # the config key covers --epochs etc.
        resolved = json.loads((run / "config.json").read_text())["resolved"]
        assert (resolved["n_train"], resolved["n_val"], resolved["n_test"]) == (10 - n_val, n_val, 5)
        assert json.loads((run / "split.json").read_text())["val"] == list(range(10 - n_val, 10))
        assert resolved["data"]["train"]["protocol"] == native.vtab(tmp_path, "dtd", dataset[9:]).train_record["protocol"]
        splits = {m["split"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
        summary = json.loads((run / "summary.json").read_text())
        assert splits == ({"train", "val", "test"} if n_val else {"train", "test"})
        assert (summary["best_val_acc1"] is None) == (n_val == 0) and summary["status"] == "complete"
    table = {t["dataset"]: t for t in report.overview(groups.labelled_rows(runs.discover(tmp_path / "runs").runs))}
    assert table["vtab:dtd"]["val_acc1"] is None and table["vtab:dtd:train800"]["val_acc1"] is not None


def test_a_vtab_list_naming_a_missing_file_is_one_line(tmp_path, rng, vtab_sizes, capsys):
    folder = vtab(tmp_path, rng)
    (folder / "images" / "0012.jpg").unlink()  # a test image
    argv = ["train", "--dataset", "vtab:dtd", "--data-root", str(tmp_path), "--backbone", "vit_nano",
            "--weights", "none", "--out", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{folder}/test.txt names {folder}/images/0012.jpg" in err


def test_vtab_lists_are_checked_against_the_protocol(tmp_path, rng, vtab_sizes):
    folder = vtab(tmp_path, rng)
    with pytest.raises(UserError, match="unknown VTAB-1k task 'dtdd'; the 19 are cifar, caltech101"):
        load("vtab:dtdd", tmp_path)
    with pytest.raises(UserError, match="expected vtab:dtd .* or vtab:dtd:train800"):
        load("vtab:dtd:val", tmp_path)
    test_list = (folder / "test.txt").read_text()
    (folder / "test.txt").write_text("images/0010.jpg\n" + test_list)
    with pytest.raises(UserError, match="test.txt line 1: expected 'path label', got 'images/0010.jpg'"):
        load("vtab:dtd", tmp_path)
    (folder / "test.txt").write_text(test_list)
    both = (folder / "train800val200.txt").read_text().replace("images/0009.jpg 0", "images/0009.jpg 1")
    (folder / "train800val200.txt").write_text(both)
    with pytest.raises(UserError, match="is not train800.txt \\+ val200.txt"):
        load("vtab:dtd", tmp_path)
    (folder / "train800val200.txt").write_text("\n".join(both.splitlines()[:-1]))
    with pytest.raises(UserError, match="train800val200.txt has 9 lines, the protocol's has 10"):
        load("vtab:dtd", tmp_path)
    (folder / "val200.txt").unlink()
    with pytest.raises(UserError, match=f"expected {folder}/val200.txt"):
        load("vtab:dtd", tmp_path)
    with pytest.raises(UserError, match="--skip-corrupt does not apply"):
        load("vtab:dtd", tmp_path, skip_corrupt=True)


# -- the VTAB-1k study -----------------------------------------------------------------------------

STUDY = Path(__file__).resolve().parents[1] / "analysis" / "vtab_study.toml"


def test_the_vtab_study_file_names_the_19_tasks_and_the_three_methods():
    import tomllib

    spec = tomllib.loads(STUDY.read_text())
    assert spec["datasets"] == [f"vtab:{t}" for t in native.VTAB_CLASSES] and len(spec["datasets"]) == 19
    assert spec["backbones"] == ["vit_base_patch16_224.orig_in21k"] and spec["methods"] == ["head", "full", "adapter"]


def test_the_vtab_study_expands_to_19_tasks():
    study = pytest.importorskip("adaptertune.study", reason="adaptertune.study (the study helper's branch) "
                                "is not on this branch yet")
    configs = study.load(STUDY).configs
    assert {c.dataset for c in configs} == {f"vtab:{t}" for t in native.VTAB_CLASSES}
    assert {c.method for c in configs} == {"head", "full", "adapter"}
    assert len({c.run_id for c in configs}) == len(configs)
