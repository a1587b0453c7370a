"""Real timm backbones: families, names and tags, hub-cache weights offline, the model's own
preprocessing and pooling, optimiser groups and the few-shot protocol. No network: tiny real
architectures (timm kwargs), `pretrained=False`, weight files the tests write."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptertune import data
from adaptertune.adapters import adapter_params, add_adapters
from adaptertune.backbones import build_model, create_backbone, describe, preprocess
from adaptertune.cli import main
from adaptertune.config import Config
from adaptertune.errors import UserError
from adaptertune.features import extract
from adaptertune.preprocess import Preprocess
from adaptertune.train import param_groups

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
# name -> how the head reads the last block's tokens (what "features" must pool linearly)
FAMILIES = {
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": "token",      # plain ViT, class token
    "deit_tiny_distilled_patch16_224.fb_in1k": "token+dist",     # two heads: class and distillation token
    "vit_small_patch14_reg4_dinov2.lvd142m": "token",            # 4 register tokens after the class token
    "vit_base_patch16_siglip_224.webli": "avg",                  # `map` attention pooling, no class token
    "vit_medium_patch16_gap_256.sw_in12k_ft_in1k": "avg",        # average pooling
    "vit_small_patch16_dinov3.lvd1689m": "avg",                  # Eva: rope, 4 registers, average pooling
}
UINT8 = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
PRE = Preprocess(32, (0.5,) * 3, (0.5,) * 3)


def _images(x=UINT8):
    return data.Images(x, torch.zeros(len(x), dtype=torch.long), 5)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_init_is_exact_and_features_are_timms_own(name):
    frozen = create_backbone(name, "none", num_classes=5, **SMALL).eval()
    model = create_backbone(name, "none", num_classes=5, **SMALL).eval()
    model.load_state_dict(frozen.state_dict())
    add_adapters(model, rank=4)
    x = PRE.eval(UINT8)
    with torch.no_grad():
        assert torch.equal(model(x), frozen(x))  # adapters at init: bit-identical logits
        prelogits = frozen.forward_head(frozen.forward_features(x), pre_logits=True)
        last, = frozen.forward_intermediates(x, indices=1, output_fmt="NLC", norm=False,
                                             return_prefix_tokens=True, intermediates_only=True)
    spatial, prefix = last if isinstance(last, tuple) else (last, None)  # the last block's output, before the norm
    f = extract(model, _images(), np.arange(6), preprocess=PRE, device="cpu")
    assert np.array_equal(f["prelogits"], prelogits.numpy())  # what the head reads, via timm's forward_head
    expected = {"token": lambda: prefix[:, 0], "token+dist": lambda: (prefix[:, 0] + prefix[:, 1]) / 2,
                "avg": lambda: spatial.mean(1)}[FAMILIES[name]]()  # registers never pooled
    np.testing.assert_allclose(f["features"], expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_parameter_counts(name):
    config = Config(backbone=name, weights="none", rank=4)
    model, counts = build_model(config, num_classes=7, **SMALL)
    heads = 2 if "distilled" in name else 1
    assert counts["trainable_params"] == 2 * adapter_params(32, 4) + heads * (32 * 7 + 7)
    assert counts["full_trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if ".adapter." not in n)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n or n.split(".")[0] in ("head", "head_dist") for n in trainable)


def test_tagged_names_resolve_and_are_recorded():
    model = create_backbone("vit_small_patch16_224", "none", num_classes=3, **SMALL)
    assert describe(model, "vit_small_patch16_224", "none")["model"] == "vit_small_patch16_224.augreg_in21k_ft_in1k"
    tagged = create_backbone("vit_small_patch16_224.dino", "none", num_classes=3, **SMALL)
    assert describe(tagged, "vit_small_patch16_224.dino", "hub") == {
        "model": "vit_small_patch16_224.dino", "weights_source": "hf-hub:timm/vit_small_patch16_224.dino"}
    with pytest.raises(UserError, match="unknown pretrained tag 'nosuch'.*augreg_in1k"):
        create_backbone("vit_small_patch16_224.nosuch", "none")
    with pytest.raises(UserError, match="did you mean"):
        create_backbone("vit_smal_patch16_224", "none")
    with pytest.raises(UserError, match="adapters support VisionTransformer"):
        create_backbone("resnet18", "none")


def test_preprocessing_is_the_models_own_data_config():
    augreg, dinov2 = preprocess("vit_base_patch16_224.augreg2_in21k_ft_in1k"), preprocess("vit_small_patch14_dinov2.lvd142m")
    assert (augreg.crop_pct, augreg.interpolation, augreg.mean) == (0.9, "bicubic", (0.5, 0.5, 0.5))
    assert (dinov2.input_size, dinov2.crop_pct, dinov2.interpolation) == (518, 1.0, "bicubic")
    assert dinov2.mean == pytest.approx((0.485, 0.456, 0.406))
    assert preprocess("vit_small_patch16_224", image_size=384).input_size == 384


@pytest.mark.parametrize("dc", [
    dict(crop_pct=0.875, interpolation="bilinear", crop_mode="center", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    dict(crop_pct=1.0, interpolation="bicubic", crop_mode="center", mean=(0.5,) * 3, std=(0.5,) * 3),
    dict(crop_pct=0.9, interpolation="bicubic", crop_mode="squash", mean=(0.5,) * 3, std=(0.5,) * 3),
])
def test_eval_of_a_uint8_batch_matches_timms_create_transform(dc):
    """Measured: every pixel within 2 uint8 levels of timm's PIL pipeline, the mean absolute
    difference under 0.15 levels (PIL's fixed-point kernels against torch's float ones)."""
    from PIL import Image
    from timm.data import create_transform

    dc = dict(dc, input_size=(3, 28, 28))
    reference, ours = create_transform(**dc), Preprocess.from_data_config(dc)
    rng = np.random.default_rng(0)
    for shape in [(40, 50), (64, 64), (20, 20), (70, 45), (32, 32)]:
        x = rng.integers(0, 256, (4, *shape, 3), dtype=np.uint8)
        expected = torch.stack([reference(Image.fromarray(a)) for a in x])
        got = ours.eval(torch.from_numpy(x).permute(0, 3, 1, 2))
        levels = (got - expected).abs() * torch.tensor(dc["std"]).view(1, 3, 1, 1) * 255
        assert got.shape == expected.shape == (4, 3, 28, 28)
        assert levels.max() <= 2.001
        assert levels.mean() < 0.15


def _hf_cache(home: Path, name: str, state: dict) -> None:
    """huggingface_hub's cache layout for timm/<name> holding `state` as model.safetensors."""
    from safetensors.torch import save_file

    repo = home / "hub" / f"models--timm--{name}"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file(state, repo / "snapshots" / "abc123" / "model.safetensors")


def test_offline_weights_come_from_the_hugging_face_cache_and_uncached_is_one_line(tmp_path):
    """HF_HOME and HF_HUB_OFFLINE as huggingface_hub reads them (at import: a fresh process)."""
    name = "deit_tiny_patch16_224.fb_in1k"
    source = create_backbone(name, "none", num_classes=1000, **SMALL)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))  # not the fixed random init
    _hf_cache(tmp_path / "hf", name, {k: v.contiguous() for k, v in source.state_dict().items()})
    uncached = ["train", "--backbone", "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "--dataset", "synthetic",
                "--train-samples", "20", "--test-samples", "10", "--epochs", "1", "--out", str(tmp_path / "runs")]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    script = (f"import sys, torch; from adaptertune.backbones import create_backbone; from adaptertune.cli import main; "
              f"m = create_backbone({name!r}, 'hub', num_classes=3, **{SMALL!r}); "
              f"torch.save(m.state_dict(), {str(tmp_path / 'loaded.pt')!r}); sys.exit(main({uncached!r}))")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    loaded = torch.load(tmp_path / "loaded.pt")
    for k, v in source.state_dict().items():
        if not k.startswith("head."):  # timm drops a 1000-class head for a 3-class model
            assert torch.equal(loaded[k], v), k
    assert loaded["head.weight"].shape == (3, 32)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not in the Hugging Face cache" in lines[0] and "--weights PATH" in lines[0]


def test_optimiser_groups_come_from_the_model():
    model = create_backbone("deit_tiny_distilled_patch16_224", "none", num_classes=5, **SMALL)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.05)
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "dist_token", "blocks.0.norm1.weight", "head.bias"} <= no_decay
    assert {"blocks.0.attn.qkv.weight", "head.weight", "head_dist.weight"} <= decay
    assert len(no_decay) + len(decay) == len(names)

    scale = {names[id(p)]: g["lr_scale"] for g in param_groups(model, 0.05, layer_decay=0.5) for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.1.mlp.fc1.weight"] == 0.5
    assert scale["blocks.0.mlp.fc1.weight"] == 0.25 and scale["patch_embed.proj.weight"] == 0.125


def test_layer_decay_scales_each_groups_lr_while_training(tmp_path):
    from adaptertune.train import Trainer

    config = Config(dataset="synthetic", backbone="vit_nano", weights="none", method="full", layer_decay=0.5,
                    train_samples=64, test_samples=16, batch_size=32, epochs=1, log_every=0)
    t = Trainer(config, log=lambda *a: None)
    t.train_epoch(np.arange(64), epoch=0, step=0, total=10, warmup=0)
    lrs = {g["lr_scale"]: g["lr"] for g in t.opt.param_groups}
    assert len(lrs) == 5  # embeddings, three blocks, head
    for s, lr in lrs.items():
        assert lr == pytest.approx(lrs[1.0] * s)


def test_shots_are_k_per_class_apart_from_validation_and_shared_by_methods(tmp_path):
    argv = ["train", "--dataset", "synthetic", "--backbone", "vit_nano", "--weights", "none", "--train-samples", "200",
            "--test-samples", "20", "--feature-samples", "8", "--batch-size", "32", "--log-every", "0",
            "--epochs", "1", "--shots", "3", "--out", str(tmp_path)]
    assert main([*argv, "--method", "adapter,head", "--seeds", "0"]) == 0
    assert main([*argv, "--method", "head", "--seeds", "1"]) == 0
    labels = data.synthetic(Config(train_samples=200, test_samples=20))[0].labels.numpy()
    splits = {}
    for method, seed in (("adapter-r16", 0), ("head", 0), ("head", 1)):
        run = next(tmp_path.glob(f"synthetic-vit_nano-{method}-3shot-????????-s{seed}"))
        split = json.loads((run / "split.json").read_text())
        train, val = np.array(split["train"]), np.array(split["val"])
        assert np.bincount(labels[train], minlength=10).tolist() == [3] * 10
        assert not np.intersect1d(train, val).size and len(val) == 20
        assert json.loads((run / "config.json").read_text())["resolved"]["n_train"] == 30
        splits[method, seed] = train
    assert np.array_equal(splits["adapter-r16", 0], splits["head", 0])  # the same images for every method
    assert not np.array_equal(splits["head", 0], splits["head", 1])  # drawn by the seed
    with pytest.raises(UserError, match="--shots 50: class"):
        data.few_shot_indices(labels, np.arange(200), 50, seed=0)


def test_bf16_training_saves_fp32_features_whose_spectrum_shows_the_adapter_rank(tmp_path):
    """Features under the run's bf16 autocast showed 13 and 11 "significant" directions here."""
    from adaptertune import runs
    from adaptertune.analysis.spectrum import spectrum

    argv = ["train", "--dataset", "synthetic", "--backbone", "vit_nano", "--weights", "none", "--train-samples", "160",
            "--test-samples", "120", "--feature-samples", "120", "--batch-size", "40", "--log-every", "0",
            "--blocks", "last:1", "--precision", "bf16", "--epochs", "2", "--lr", "0.02", "--warmup-epochs", "0",
            "--rank", "1,4", "--out", str(tmp_path)]
    assert main(argv) == 0
    for rank in (1, 4):
        run = next(tmp_path.glob(f"synthetic-vit_nano-adapter-r{rank}-last1-????????-s0"))
        resolved = json.loads((run / "config.json").read_text())["resolved"]
        assert resolved["precision"] == "bf16" and resolved["features_precision"] == "fp32"
        f = runs.load_arrays(run / "features.safetensors")
        assert f["adapted"].dtype == np.float32
        assert spectrum(f["frozen"], f["adapted"]).significant == rank
