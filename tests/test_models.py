"""The ResNet design space: exact counts against docs/REFERENCE.md, every unit type x shortcut option,
the operation order of each unit, the registry, and the errors a user sees."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ablate.config import LAYERS_PER_UNIT, ModelSpec
from ablate.models import (
    ResNet,
    build_model,
    count_macs,
    count_params,
    create_model,
    imagenet_spec,
    list_models,
    model_spec,
    register_model,
    registry_name,
    spec_for_depth,
)
from ablate.models.blocks import BasicBlock, Projection, ZeroPadShortcut
from ablate.models.resnet import GlobalAvgPool

BLOCK_TYPES = list(LAYERS_PER_UNIT)
SHORTCUTS = ["A", "B", "C", "none"]

# docs/REFERENCE.md, "Exact counts": option A, basic units; a plain net has its residual-A twin's count.
PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
PAPER_MACS = {20: 40_551_040, 56: 125_485_696, 110: 252_887_680, 1202: 2_829_238_912}

# He et al. 2015 Table 1 nets at 1000 classes and 224x224, option B: torchvision's published parameter
# counts, and its published "GFLOPS" (multiply-adds, to two decimals; stride in the bottleneck's 3x3 conv).
IMAGENET_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
IMAGENET_GMACS = {18: 1.81, 34: 3.66, 50: 4.09, 101: 7.80, 152: 11.51}
IMAGENET = dict(num_classes=1000, image_size=224)

# The registered names the project relies on (study files and `ablate models` refer to them).
PROMISED_MODELS = {
    *(f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)),
    *(f"plain{d}" for d in (20, 32, 44, 56, 110)),
    "resnet20_b", "resnet20_c", "resnet56_b", "resnet56_c",
    "resnet164", "resnet1001", "preact_resnet110", "preact_resnet164", "preact_resnet1001",
    *(f"resnet{d}" for d in IMAGENET_PARAMS), "plain18", "plain34", "resnet34_a", "resnet34_c", "resnet18_cifar",
}  # fmt: skip


@functools.cache
def meta_model(name: str) -> ResNet:
    """A registered model built on the meta device (shapes only), once per test session."""
    with torch.device("meta"):
        return create_model(name)


# -- exact counts --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", PAPER_PARAMS)
def test_counts_match_reference(depth):
    """Counted from the spec on the meta device (no forward pass of real weights, even for 1202)."""
    spec = model_spec(f"resnet{depth}")
    assert count_params(spec) == PAPER_PARAMS[depth]
    if depth in PAPER_MACS:
        assert count_macs(spec) == PAPER_MACS[depth]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_net_has_exactly_the_parameters_of_residual_a(depth):
    assert count_params(model_spec(f"plain{depth}")) == PAPER_PARAMS[depth]


def test_macs_of_a_grayscale_28px_resnet20_by_hand():
    """Maps of 28, 14, 7 pixels; per-pixel weights of each conv summed by stage, plus FC 64 x 10.

    stem 28^2 x (1*9*16) = 112,896; stage 1 28^2 x 6 x 2,304 = 10,838,016;
    stage 2 14^2 x (4,608 + 5 x 9,216) = 9,934,848; stage 3 7^2 x (18,432 + 5 x 36,864) = 9,934,848.
    """
    expected = 112_896 + 10_838_016 + 9_934_848 + 9_934_848 + 640
    assert count_macs(ModelSpec(n=3), in_channels=1, image_size=28) == expected


def test_projection_shortcuts_add_exactly_the_projection_weights():
    """ResNet-20 by hand. B projects only where the shape changes: 16->32 (1x1 conv 512 + BN 64)
    and 32->64 (2,048 + 128): 2,752 parameters, and 16^2 x 512 + 8^2 x 2,048 = 262,144 MACs.
    C projects all nine shortcuts: stage 1 3 x (256 + 32) = 864; stage 2 576 + 2 x (1,024 + 64) = 2,752;
    stage 3 2,176 + 2 x (4,096 + 128) = 10,624; together 14,240."""
    base = model_spec("resnet20")
    assert count_params(model_spec("resnet20_b")) - count_params(base) == 2_752
    assert count_params(model_spec("resnet20_c")) - count_params(base) == 14_240
    assert count_macs(model_spec("resnet20_b")) - count_macs(base) == 262_144


@pytest.mark.parametrize("depth", IMAGENET_PARAMS)
def test_imagenet_counts_match_torchvision(depth):
    spec = model_spec(f"resnet{depth}")
    assert count_params(spec, num_classes=1000) == IMAGENET_PARAMS[depth]
    assert round(count_macs(spec, **IMAGENET) / 1e9, 2) == IMAGENET_GMACS[depth]


def test_imagenet_plain_twins_and_shortcut_options():
    """Table 2's plain nets and option A have no projection; B adds the three downsampling projections
    (1x1 conv + BN: 64->128, 128->256, 256->512 = 8,192 + 256 + 32,768 + 512 + 131,072 + 1,024); C adds
    one on every unit."""
    projections_b = 8_192 + 256 + 32_768 + 512 + 131_072 + 1_024
    for depth in (18, 34):
        assert count_params(model_spec(f"plain{depth}"), num_classes=1000) == IMAGENET_PARAMS[depth] - projections_b
    assert count_params(model_spec("resnet34_a"), num_classes=1000) == IMAGENET_PARAMS[34] - projections_b
    assert count_params(model_spec("resnet34_c"), num_classes=1000) > IMAGENET_PARAMS[34]
    assert model_spec("resnet34-A").shortcut == "A" and model_spec("plain34").name == "plain34"


def test_small_image_resnet18():
    """The textbook ResNet-18 for CIFAR: ResNet-18 with a 3x3 stride-1 stem and no max-pool. By hand from
    ResNet-18: 7x7x3x64 stem -> 3x3x3x64 (-7,680), FC 512x1000+1000 -> 512x10+10 (-507,870)."""
    spec = model_spec("resnet18_cifar")
    assert spec.name == "resnet18-cifar" and spec.stage_units == (2, 2, 2, 2) and spec.width == 64
    assert count_params(spec) == IMAGENET_PARAMS[18] - 7_680 - 507_870 == 11_173_962
    assert count_params(spec, in_channels=1) == 11_173_962 - 2 * 9 * 64  # Fashion-MNIST: one input channel
    with torch.device("meta"):
        model = build_model(spec)
    assert list(model.stem) == [model.stem.conv, model.stem.bn, model.stem.relu]
    assert model.stem.conv.kernel_size == (3, 3) and model.stem.conv.stride == (1, 1)


def test_imagenet_layout_maps_and_stem():
    """conv1 7x7 stride 2 -> 112, max-pool -> 56, then conv2_x..conv5_x at 56, 28, 14, 7 (Table 1)."""
    with torch.device("meta"):
        model = create_model("resnet50", num_classes=1000)
        shapes = []
        for stage in model.stages:
            stage.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape[1:])))
        model(torch.empty(1, 3, 224, 224))
    assert shapes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert model.stem.conv.kernel_size == (7, 7) and model.stem.conv.stride == (2, 2)
    assert model.stem.pool.kernel_size == 3 and model.stem.pool.stride == 2


def test_table1_note_is_true(monkeypatch):
    """ablate models' note: with the stride in the first 1x1 conv (the paper's models), the bottleneck nets
    cost 231.2M MACs less: 3.86 / 7.57 / 11.28 G, Table 1's 3.8 / 7.6 / 11.3."""
    from ablate.models import blocks
    from ablate.models.registry import TABLE1_NOTE

    def stride_in_first_1x1(self, in_channels, channels, stride):
        return [blocks.conv1x1(in_channels, channels, stride), blocks.conv3x3(channels, channels),
                blocks.conv1x1(channels, channels * self.expansion)]

    with_3x3 = {d: count_macs(model_spec(f"resnet{d}"), **IMAGENET) for d in (50, 101, 152)}
    monkeypatch.setattr(blocks.Bottleneck, "_layers", stride_in_first_1x1)
    for depth, expected in ((50, 3.86), (101, 7.57), (152, 11.28)):
        with torch.device("meta"):
            model = create_model(f"resnet{depth}", num_classes=1000)
        macs = count_macs(model, image_size=224)
        assert round(macs / 1e9, 2) == expected and f"{expected}" in TABLE1_NOTE
        assert with_3x3[depth] - macs == 231_211_008
    assert "231.2M" in TABLE1_NOTE


def test_counting_a_built_model_agrees_and_leaves_it_untouched():
    model = create_model("resnet20").train()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    assert count_params(model) == PAPER_PARAMS[20]
    assert count_macs(model) == PAPER_MACS[20]
    assert model.training
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())


# -- every unit type x every shortcut option -----------------------------------------------------


@pytest.mark.parametrize("block", BLOCK_TYPES)
@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize(("in_channels", "size", "classes"), [(3, 32, 10), (1, 28, 100)])
def test_forward_backward(block, shortcut, in_channels, size, classes):
    """One real step; the real forward's FLOPs (PyTorch's own counter) also check count_macs."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(block=block, n=1, shortcut=shortcut), in_channels=in_channels, num_classes=classes)
    with FlopCounterMode(display=False) as flops:
        logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, classes)
    assert flops.get_total_flops() == 2 * 2 * count_macs(model, image_size=size)  # 2 images, 2 FLOPs per MAC
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("block", BLOCK_TYPES)
@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_shortcut_modules_follow_the_option(block, shortcut):
    """A: zero-pad where the shape changes; B: project there; C: project everywhere; none: no shortcut.
    The shape changes in the first unit of stages 2 and 3, and of stage 1 for bottleneck units (16 -> 64)."""
    with torch.device("meta"):
        model = build_model(ModelSpec(block=block, n=2, shortcut=shortcut))
    for i, stage in enumerate(model.stages):
        for j, unit in enumerate(stage):
            reshapes = j == 0 and (i > 0 or block.endswith("bottleneck"))
            expected = {
                "A": ZeroPadShortcut if reshapes else nn.Identity,
                "B": Projection if reshapes else nn.Identity,
                "C": Projection,
                "none": type(None),
            }[shortcut]
            assert type(unit.shortcut) is expected, (i, j)


def test_zero_pad_shortcut_subsamples_and_appends_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert not out[:, 16:].any()


def _silence(*modules: nn.Module) -> None:
    """Zero the weights (and biases) of ``modules``: their output becomes exactly 0."""
    for module in modules:
        for p in module.parameters():
            nn.init.zeros_(p)


def test_basic_unit_applies_relu_after_the_addition():
    x = torch.randn(2, 16, 8, 8)  # negative entries included
    unit = BasicBlock(16, 16, shortcut=nn.Identity())
    _silence(unit.bn2)  # residual branch = 0
    assert torch.equal(unit(x), F.relu(x))
    plain = BasicBlock(16, 16, shortcut=None)
    _silence(plain.bn2)
    assert not plain(x).any()  # no addition: ReLU(0)


def test_preact_unit_has_nothing_after_the_addition():
    x = torch.randn(2, 16, 8, 8)
    unit = BasicBlock(16, 16, shortcut=nn.Identity(), activation="full_preact")
    _silence(unit.conv2)
    assert torch.equal(unit(x), x)  # negative values survive: no ReLU after the addition
    plain = BasicBlock(16, 16, shortcut=None, activation="full_preact")
    _silence(plain.conv2)
    assert not plain(x).any()


def test_preact_projection_reads_the_preactivated_input():
    x = torch.randn(2, 16, 8, 8)
    unit = BasicBlock(16, 32, stride=2, shortcut=Projection(16, 32, stride=2), activation="full_preact")
    _silence(unit.conv2)
    assert torch.equal(unit(x), unit.shortcut(F.relu(unit.bn1(x))))


def test_preact_nets_have_a_bare_stem_and_a_bn_relu_head():
    with torch.device("meta"):
        post, pre = build_model(ModelSpec(block="basic")), build_model(ModelSpec(block="preact"))
    assert list(post.stem) == [post.stem.conv, post.stem.bn, post.stem.relu]
    assert list(pre.stem) == [pre.stem.conv]
    assert [type(m) for m in pre.head][:2] == [nn.BatchNorm2d, nn.ReLU]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in post.head)


def test_he_initialisation():
    torch.manual_seed(0)
    model = create_model("resnet20")
    conv = model.stages[2][1].conv2  # 64 -> 64, 3x3: 36,864 weights
    expected_std = math.sqrt(2.0 / (64 * 3 * 3))  # Kaiming normal, fan_out, ReLU gain
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert not module.bias.any()


# -- over the registry ---------------------------------------------------------------------------


def test_registry_holds_the_promised_models():
    assert PROMISED_MODELS <= set(list_models())
    assert list_models("resnet20*") == ["resnet20", "resnet20_b", "resnet20_c"]
    assert set(list_models("preact_*")) == {"preact_resnet110", "preact_resnet164", "preact_resnet1001"}


@pytest.mark.parametrize("name", list_models())
def test_registered_name_is_the_paper_name(name):
    spec = model_spec(name)
    assert registry_name(spec) == name
    assert model_spec(spec.name) == spec  # "resnet56-B" finds resnet56_b
    assert spec.depth == int(re.search(r"\d+", name).group())
    assert (spec.name == name) == ("-" not in spec.name)  # only the option variants (resnet56-B) differ


@pytest.mark.parametrize("name", list_models())
def test_weighted_layers_equal_the_depth(name):
    """Convs on the main path (projections are not counted, as in the paper) plus the FC layer."""
    model = meta_model(name)
    projections = {id(m) for p in model.modules() if isinstance(p, Projection) for m in p.modules()}
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in projections]
    assert len(layers) == model.spec.depth


@pytest.mark.parametrize("name", list_models())
def test_response_modules(name):
    """One per 3x3 layer (the imagenet stem's 7x7 conv is not one): 6n + 1 for CIFAR basic nets,
    3n + 1 for CIFAR bottleneck nets; each the BN right after the 3x3 conv, or the conv in preact units."""
    model = meta_model(name)
    responses = model.response_modules()
    units = sum(model.spec.stage_units)
    per_unit = 2 if model.spec.block in ("basic", "preact") else 1
    assert len(responses) == per_unit * units + (model.spec.stem == "cifar")
    three_by_three = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(three_by_three) == len(responses)
    for name_, module in responses:
        assert model.get_submodule(name_) is module
        if model.placement == "full_preact":
            assert module.kernel_size == (3, 3)
        else:  # the BN right after a 3x3 conv: stem.bn <- stem.conv, stages.i.j.bnK <- stages.i.j.convK
            assert isinstance(module, nn.BatchNorm2d)
            assert model.get_submodule(name_.replace("bn", "conv")).kernel_size == (3, 3)


@pytest.mark.parametrize("name", list_models())
def test_parts_partition_the_parameters(name):
    model = meta_model(name)
    parts = model.parts()
    stages = [f"stage{i + 1}" for i in range(len(model.spec.stage_units))]
    assert list(parts) == ["stem", *stages, "head"]
    assert sum(count_params(part) for part in parts.values()) == count_params(model)


def test_bottleneck_nets_match_the_2016_paper_sizes():
    """He et al. 2016, Table 2: ResNet-164 1.7M and ResNet-1001 10.2M parameters (rounded)."""
    assert count_params(meta_model("resnet164")) / 1e6 == pytest.approx(1.7, abs=0.05)
    assert count_params(meta_model("preact_resnet1001")) / 1e6 == pytest.approx(10.2, abs=0.15)


# -- creating models and specs -------------------------------------------------------------------


def test_imagenet_spec():
    assert imagenet_spec(50) == model_spec("resnet50")
    assert imagenet_spec(34, shortcut="A").name == "resnet34-A"
    assert imagenet_spec(18, stem="cifar", width_mult=0.25).name == "resnet18-cifar-w16"
    with pytest.raises(ValueError, match="no ImageNet net of depth 20 in Table 1; depths: 18, 34, 50, 101, 152"):
        imagenet_spec(20)


def test_spec_for_depth():
    assert spec_for_depth(110) == ModelSpec(n=18)
    assert spec_for_depth(164, block="bottleneck", shortcut="B") == ModelSpec(block="bottleneck", n=18, shortcut="B")
    assert spec_for_depth(20, block="preact", width_mult=2.0).width == 32


def test_create_model_applies_spec_overrides():
    with torch.device("meta"):
        model = create_model("resnet20", in_channels=1, num_classes=100, width_mult=0.5)
    assert model.spec == ModelSpec(n=3, width_mult=0.5)
    assert model.stem.conv.in_channels == 1 and model.stem.conv.out_channels == 8
    assert model.head.fc.out_features == 100


# -- errors a user can act on --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: model_spec("resnet21"), r"unknown model 'resnet21'; close matches: .*resnet20"),
        (lambda: create_model("vgg16"), r"unknown model 'vgg16'.*resnet20"),
        (lambda: spec_for_depth(21), r"depth 21 .* 6n\+2 .*nearest valid depths: 20, 26"),
        (lambda: spec_for_depth(21, block="bottleneck"), r"9n\+2 .*nearest valid depths: 20, 29"),
        (lambda: spec_for_depth(3), r"nearest valid depths: 8, 14"),
        (lambda: spec_for_depth(20, block="wide"), r"unknown block 'wide'; allowed: basic, preact, bottleneck, preact_bottleneck"),
        (lambda: spec_for_depth(20, n=3), r"not both"),
        (lambda: spec_for_depth(20, shortcut="D"), r"spec_for_depth\(20\): shortcut"),
        (lambda: create_model("resnet20", shortcut="D"), r"create_model\('resnet20'\): shortcut"),
        (lambda: build_model(ModelSpec(), in_channels=0), r"in_channels must be at least 1 .*got 0"),
        (lambda: build_model(ModelSpec(), num_classes=1), r"num_classes must be at least 2, got 1"),
        (lambda: count_macs(ModelSpec(), image_size=3), r"3x3 pixels is too small.*at least 4"),
        (lambda: count_macs(model_spec("resnet18"), image_size=28), r"28x28 pixels is too small.*at least 32"),
        (lambda: ModelSpec(n=[2, 0]), r"units per stage"),
    ],
)
def test_unsupported_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_too_small_images_are_refused_in_forward():
    model = create_model("resnet20", num_classes=10)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)  # 4 -> 2 -> 1 still works
    assert count_macs(model, image_size=4) == count_macs(ModelSpec(n=3), image_size=4) > 0
    with pytest.raises(ValueError, match="3x4 pixels is too small"):
        model(torch.randn(2, 3, 3, 4))


def test_register_model_refuses_a_name_that_is_not_the_spec_name():
    def resnet21() -> ModelSpec:
        return ModelSpec(n=3)

    def resnet20() -> ModelSpec:
        return ModelSpec(n=3)

    with pytest.raises(ValueError, match="register it as 'resnet20'"):
        register_model(resnet21)
    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet20)
    assert "resnet21" not in list_models()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_avg_pool_gives_adaptive_avg_pools_numbers_to_the_bit(dtype, channels_last):
    """The head's mean (batched by vmap, unlike AdaptiveAvgPool2d's in-place restride on channels_last)
    changes no result: the same bits as AdaptiveAvgPool2d(1), forward and backward."""
    torch.manual_seed(0)
    x = torch.randn(100, 64, 8, 8).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = GlobalAvgPool()(ours), nn.AdaptiveAvgPool2d(1)(theirs)
    grad = torch.randn(ref.shape).to(dtype)
    out.backward(grad)
    ref.backward(grad)
    assert out.shape == ref.shape == (100, 64, 1, 1)
    assert torch.equal(out, ref) and torch.equal(ours.grad, theirs.grad)
