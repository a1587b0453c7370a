import dataclasses

import pytest
import torch

from adaptertune.adapters import Adapter, adapter_params, adapters_disabled, adapters_of, add_adapters
from adaptertune.backbones import build_model, create_backbone
from adaptertune.config import Config, PLACEMENTS


@pytest.fixture(scope="module")
def vit_small_and_input():
    model = create_backbone("vit_small_patch16_224", "none", num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model, x, model(x)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_zero_init_adapted_logits_equal_frozen_exactly(vit_small_and_input, placement):
    frozen_model, x, frozen = vit_small_and_input
    model = create_backbone("vit_small_patch16_224", "none", num_classes=10).eval()
    model.load_state_dict(frozen_model.state_dict())
    adapters = add_adapters(model, rank=8, placement=placement)
    assert len(adapters) == len(model.blocks) * len(placement.split("+"))  # attn+mlp: two per block
    with torch.no_grad():
        assert torch.equal(model(x), frozen)


def test_random_init_changes_the_function_and_disabling_restores_it(vit_small_and_input):
    frozen_model, x, frozen = vit_small_and_input
    model = create_backbone("vit_small_patch16_224", "none", num_classes=10).eval()
    model.load_state_dict(frozen_model.state_dict())
    add_adapters(model, rank=8, init="random")
    with torch.no_grad():
        assert not torch.allclose(model(x), frozen)
        with adapters_disabled(model):
            assert torch.equal(model(x), frozen)
        assert not torch.allclose(model(x), frozen)  # re-enabled on exit


def test_init_variants():
    zero, small = Adapter(32, 4, "zero"), Adapter(32, 4, "small")
    assert torch.count_nonzero(zero.up.weight) == 0 and torch.count_nonzero(zero.up.bias) == 0
    assert torch.count_nonzero(zero.down.weight) == zero.down.weight.numel()
    assert 0 < small.up.weight.abs().max() < 1e-3


def _backward(config: Config):
    torch.manual_seed(0)
    model, _ = build_model(config, num_classes=5)
    x = torch.randn(4, 3, 32, 32)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    return model


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_one_backward_reaches_every_up_projection_and_no_backbone_weight(placement):
    model = _backward(Config(backbone="vit_micro", weights="none", rank=4, placement=placement))
    for a in adapters_of(model):
        assert a.up.weight.grad is not None and a.up.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if not (name.startswith("head.") or ".adapter." in name):
            assert not p.requires_grad and p.grad is None, name


def test_a_zero_init_of_both_factors_would_be_caught():
    """The gradient check above is not vacuous: with D = 0 as well, U gets no gradient."""
    model = create_backbone("vit_micro", "none", num_classes=5)
    adapters = add_adapters(model, rank=4)
    for a in adapters:
        torch.nn.init.zeros_(a.down.weight)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(a.up.weight.grad.abs().sum() == 0 for a in adapters)


@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"])
def test_trainable_parameter_count(arch):
    for rank in (1, 8, 64):
        config = Config(backbone=arch, weights="none", rank=rank)
        with torch.device("meta"):
            model, counts = build_model(config, num_classes=100)
        d, blocks = model.embed_dim, len(model.blocks)
        head = d * 100 + 100
        assert counts["trainable_params"] == blocks * (rank * (2 * d + 1) + d) + head
        assert counts["trainable_params"] == blocks * adapter_params(d, rank) + head
        assert counts["full_trainable_params"] == sum(
            p.numel() for n, p in model.named_parameters() if ".adapter." not in n)
    with torch.device("meta"):
        _, head_only = build_model(dataclasses.replace(config, method="head"), num_classes=100)
        _, full = build_model(dataclasses.replace(config, method="full"), num_classes=100)
    assert head_only["trainable_params"] == head
    assert full["trainable_params"] == full["full_trainable_params"] == full["total_params"]


@pytest.mark.parametrize("blocks,expected", [("all", [0, 1, 2, 3]), ("every:2", [1, 3]), ("last:1", [3])])
def test_block_selection(blocks, expected):
    model = create_backbone("vit_micro", "none", num_classes=5)
    add_adapters(model, rank=2, blocks=blocks)
    wrapped = [i for i, b in enumerate(model.blocks) if any(isinstance(m, Adapter) for m in b.modules())]
    assert wrapped == expected


# -- options that cannot take effect are refused before any run starts -----------------------------------

NO_EFFECT = [  # (flags, what the one error line names); vit_nano has 3 blocks
    (["--blocks", "every:4"], "--blocks every:4: selects no block of this 3-block backbone"),
    (["--blocks", "every:9"], "--blocks every:9: selects no block"),
    (["--scale", "0"], "--scale 0: the adapter's output would be zero"),
    (["--scale", "nan"], "not finite"),
]


@pytest.mark.parametrize("flags, message", NO_EFFECT)
def test_options_that_add_no_trainable_adapter_exit_2_with_one_line(tmp_path, capsys, flags, message):
    from adaptertune.cli import main

    out = tmp_path / "runs"
    argv = ["train", "--out", str(out), "--dataset", "synthetic", "--backbone", "vit_nano", "--weights", "none",
            "--train-samples", "40", "--test-samples", "20", "--feature-samples", "8", "--epochs", "1",
            "--batch-size", "16", "--workers", "0", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not list(out.rglob("summary.json")) and not list(out.rglob("config.json"))  # no run was written


def test_every_k_within_the_depth_still_adapts_the_last_of_every_k_blocks():
    model = create_backbone("vit_nano", "none", num_classes=3)
    assert len(model.blocks) == 3
    adapters = add_adapters(model, rank=2, blocks="every:3")
    assert len(adapters) == 1 and model.blocks[2].adapter is adapters[0]


@pytest.mark.parametrize("placement, slot", [("attn", "ls1"), ("mlp", "ls2")])
def test_a_placement_the_blocks_lack_is_refused_and_the_model_left_alone(placement, slot):
    from timm.models.vision_transformer import ResPostBlock, VisionTransformer

    from adaptertune.errors import UserError

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=3,
                              block_fn=ResPostBlock)  # post-norm blocks: no ls1 / ls2 to wrap
    before = [type(b) for b in model.blocks]
    with pytest.raises(UserError, match=f"--placement {placement}: block 0 \\(ResPostBlock\\) has no `{slot}`"):
        add_adapters(model, rank=2, placement=placement)
    assert [type(b) for b in model.blocks] == before and not adapters_of(model)
    assert len(add_adapters(model, rank=2, placement="parallel")) == 2  # it does have an mlp
