"""The unit variants of He et al. 2016 ("Identity Mappings in Deep Residual Networks") in the design space:
the shortcut variants of sec. 3.1 (Fig. 2) and the activation placements of sec. 4.1 (Fig. 4). Each builds
and trains a step, and its defining property is checked: the factor, the gate and its bias, the dropped
elements, the order of BN, ReLU and the addition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ablate.config import ConfigError, ModelSpec, TrainConfig, with_overrides
from ablate.models import build_model, count_macs, count_params
from ablate.models.blocks import (
    ACTIVATIONS,
    BasicBlock,
    Bottleneck,
    DropoutShortcut,
    GatedShortcut,
    Projection,
    ScaledShortcut,
)

VARIANTS = ["scaled", "gated", "shortcut_gated", "dropout", "C"]  # C: 2016's "1x1 conv shortcut" (Fig. 2e)


SHORTCUTS = ["A", "none", *VARIANTS]
# every shortcut x placement on basic units; on bottleneck units each shortcut and each placement once
COMBINATIONS = [
    *(("basic", shortcut, activation) for shortcut in SHORTCUTS for activation in ACTIVATIONS),
    *(("bottleneck", shortcut, "original") for shortcut in SHORTCUTS),
    *(("bottleneck", "A", activation) for activation in ACTIVATIONS[1:]),
]


@pytest.mark.parametrize(("block", "shortcut", "activation"), COMBINATIONS)
def test_every_variant_trains_a_step(block, shortcut, activation):
    """One real step; PyTorch's own FLOP counter on the real forward also checks count_macs (gates included)."""
    torch.manual_seed(0)
    spec = ModelSpec(block=block, n=1, shortcut=shortcut, activation=activation, base_width=4)
    model = build_model(spec, in_channels=1, num_classes=10)
    with FlopCounterMode(display=False) as flops:
        logits = model(torch.randn(2, 1, 8, 8))
    assert flops.get_total_flops() == 2 * 2 * count_macs(model, image_size=8)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# -- shortcut variants (2016 Fig. 2) ----------------------------------------------------------------


def _units(model):
    return [unit for stage in model.stages for unit in stage]


def test_scaled_shortcut_applies_both_factors():
    join = ScaledShortcut(nn.Identity(), scale=0.5, residual_scale=0.25)
    residual, x = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.equal(join(residual, x), 0.25 * residual + 0.5 * x)
    with torch.device("meta"):
        model = build_model(ModelSpec(n=2, shortcut="scaled", shortcut_scale=0.3, residual_scale=0.7))
    for i, unit in enumerate(_units(model)):
        assert isinstance(unit.shortcut, ScaledShortcut)
        assert (unit.shortcut.scale, unit.shortcut.residual_scale) == (0.3, 0.7)
        assert isinstance(unit.shortcut.base, Projection) == (i in (2, 4))  # where the shape changes


def test_scaled_unit_output_with_a_silent_residual_is_the_scaled_input():
    unit = BasicBlock(4, 4, shortcut=ScaledShortcut(nn.Identity(), scale=0.5), activation="relu_before_add")
    nn.init.zeros_(unit.bn2.weight)  # BN output = its bias (0): the residual branch is exactly 0 after ReLU
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(unit(x), 0.5 * x)


@pytest.mark.parametrize("shortcut", ["gated", "shortcut_gated"])
def test_gate_bias_is_initialised_as_the_spec_says(shortcut):
    torch.manual_seed(0)
    for bias in (-6.0, 0.0, -2.5):
        model = build_model(ModelSpec(n=2, shortcut=shortcut, gate_bias=bias))
        gates = [unit.shortcut.gate for unit in _units(model)]
        assert len(gates) == 6 and all(isinstance(g, nn.Conv2d) and g.kernel_size == (1, 1) for g in gates)
        assert all(torch.equal(g.bias, torch.full_like(g.bias, bias)) for g in gates)
        assert all(g.weight.std() > 0 for g in gates)  # the weight is He-initialised, not left at zero
        assert [g.stride for g in gates] == [(1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]


def test_gate_parameters_by_hand():
    """ResNet-8 (n = 1), width 16: gates 16x16+16, 16x32+32, 32x64+64 = 2,928; projections as option B."""
    base = count_params(ModelSpec(n=1, shortcut="B"))
    assert count_params(ModelSpec(n=1, shortcut="gated")) == base + 2_928
    assert count_params(ModelSpec(n=1, shortcut="shortcut_gated")) == base + 2_928


@pytest.mark.parametrize(("exclusive", "bias", "expected"), [
    (True, -100.0, "x"),        # g = 0: the shortcut alone
    (True, 100.0, "r"),         # g = 1: the residual alone
    (False, -100.0, "r + x"),   # shortcut-only, 1 - g = 1: identity shortcut
    (False, 100.0, "r"),        # shortcut-only, 1 - g = 0: shortcut closed, F kept whole
])  # fmt: skip
def test_gates_weigh_the_two_paths(exclusive, bias, expected):
    gate = GatedShortcut(nn.Identity(), 4, 4, bias=bias, exclusive=exclusive)
    nn.init.zeros_(gate.gate.weight)
    r, x = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.allclose(gate(r, x), {"x": x, "r": r, "r + x": r + x}[expected])
    half = GatedShortcut(nn.Identity(), 4, 4, bias=0.0, exclusive=exclusive)
    nn.init.zeros_(half.gate.weight)  # g = sigmoid(0) = 1/2
    assert torch.allclose(half(r, x), (0.5 * r if exclusive else r) + 0.5 * x)


def test_dropout_shortcut_drops_elements_while_training_and_scales_in_evaluation():
    torch.manual_seed(0)
    drop = DropoutShortcut(nn.Identity(), 0.5)
    x = torch.randn(200, 100) + 10  # no zeros of its own
    out = drop.train()(x)
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # kept elements are not rescaled
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    assert torch.equal(drop.eval()(x), 0.5 * x)
    with torch.device("meta"):
        model = build_model(ModelSpec(n=1, shortcut="dropout", shortcut_dropout=0.3))
    assert all(isinstance(u.shortcut, DropoutShortcut) and u.shortcut.p == 0.3 for u in _units(model))


def test_one_by_one_conv_shortcut_on_every_unit_is_option_c():
    with torch.device("meta"):
        model = build_model(ModelSpec(n=3, shortcut="C"))
    assert all(isinstance(unit.shortcut, Projection) for unit in _units(model))


# -- activation placements (2016 Fig. 4) -----------------------------------------------------------


def _record(unit: nn.Module) -> tuple[list[str], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The order in which the unit's convs and BNs run, and each one's (input, output)."""
    order, seen = [], {}
    for name in ("conv1", "bn1", "conv2", "bn2"):
        def hook(module, args, out, name=name):
            order.append(name)
            seen[name] = (args[0], out)
        getattr(unit, name).register_forward_hook(hook)
    return order, seen


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_placement_order(activation):
    """(a) conv BN ReLU conv BN + ReLU; (b) conv BN ReLU conv + BN ReLU; (c) conv BN ReLU conv BN ReLU +;
    (d) ReLU conv BN ReLU conv BN +; (e) BN ReLU conv BN ReLU conv +. ``+``: the identity addition."""
    torch.manual_seed(0)
    unit = BasicBlock(4, 4, shortcut=nn.Identity(), activation=activation).train()
    order, seen = _record(unit)
    x = torch.randn(2, 4, 5, 5)
    out = unit(x)
    preact = activation == "full_preact"
    assert order == (["bn1", "conv1", "bn2", "conv2"] if preact else ["conv1", "bn1", "conv2", "bn2"])
    inp, got = lambda name: seen[name][0], lambda name: seen[name][1]
    if activation == "original":
        assert torch.equal(inp("conv2"), F.relu(got("bn1")))
        assert torch.equal(out, F.relu(got("bn2") + x))
    elif activation == "bn_after_add":
        assert torch.equal(inp("bn2"), got("conv2") + x)  # BN normalises the sum
        assert torch.equal(out, F.relu(got("bn2")))
    elif activation == "relu_before_add":
        assert torch.equal(out, F.relu(got("bn2")) + x)
        assert (out - x).min() >= 0 and out.min() < 0  # the residual is non-negative; nothing after the sum
    elif activation == "relu_preact":
        assert torch.equal(inp("conv1"), F.relu(x)) and torch.equal(inp("conv2"), F.relu(got("bn1")))
        assert torch.equal(out, got("bn2") + x)
    else:
        assert torch.equal(inp("conv1"), F.relu(got("bn1"))) and torch.equal(inp("bn1"), x)
        assert torch.equal(out, got("conv2") + x)


@pytest.mark.parametrize("activation", ["relu_preact", "full_preact"])
def test_preactivated_units_project_the_activated_input(activation):
    unit = Bottleneck(8, 4, stride=2, shortcut=Projection(8, 16, stride=2), activation=activation)
    nn.init.zeros_(unit.conv3.weight)  # the residual branch ends in exact zeros (BN of zeros is 0 too)
    x = torch.randn(2, 8, 6, 6)
    pre = F.relu(unit.bn1(x)) if activation == "full_preact" else F.relu(x)
    assert torch.equal(unit(x), unit.shortcut(pre))


@pytest.mark.parametrize(("activation", "responses"), [
    ("original", ("bn1", "bn2")), ("bn_after_add", ("bn1", "conv2")), ("relu_before_add", ("bn1", "bn2")),
    ("relu_preact", ("bn1", "bn2")), ("full_preact", ("conv1", "conv2")),
])  # fmt: skip
def test_layer_responses_follow_the_placement(activation, responses):
    """Fig. 7's response: a 3x3 layer's output after its BN, before the nonlinearity or the addition."""
    assert BasicBlock(4, 4, activation=activation).responses == responses
    middle = "conv2" if activation == "full_preact" else "bn2"  # the 3x3 conv; bn_after_add's BN3 is after the sum
    assert Bottleneck(16, 4, activation=activation).responses == (middle,)


@pytest.mark.parametrize(("activation", "stem", "head"), [
    ("original", ["conv", "bn", "relu"], []),
    ("bn_after_add", ["conv", "bn", "relu"], []),
    ("relu_before_add", ["conv", "bn", "relu"], []),
    ("relu_preact", ["conv", "bn"], ["relu"]),   # the units start with ReLU and leave the last sum unactivated
    ("full_preact", ["conv"], ["bn", "relu"]),   # 2016 sec. 4.1: BN, ReLU after the last addition
])  # fmt: skip
def test_stem_and_head_complete_the_placement(activation, stem, head):
    with torch.device("meta"):
        model = build_model(ModelSpec(n=1, activation=activation))
    assert [name for name, _ in model.stem.named_children()] == stem
    assert [name for name, _ in model.head.named_children()] == [*head, "pool", "flatten", "fc"]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_full_preact_placement_is_the_preact_block(block):
    """``block basic, activation full_preact`` builds exactly ``block preact``: same weights, same outputs."""
    nets = []
    for spec in (ModelSpec(block=block, n=2, shortcut="B", activation="full_preact"),
                 ModelSpec(block=f"preact_{block}" if block == "bottleneck" else "preact", n=2, shortcut="B")):
        torch.manual_seed(0)
        nets.append(build_model(spec))
    a, b = nets
    assert a.spec.name == b.spec.name
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


# -- the spec: names and the combinations it refuses -------------------------------------------------


def test_names_say_the_variant():
    assert ModelSpec(n=18, shortcut="gated").name == "resnet110-gated"
    assert ModelSpec(n=18, activation="bn_after_add").name == "resnet110-bn_after_add"
    assert ModelSpec(n=18, activation="full_preact").name == "preact_resnet110"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model.block": "preact", "model.activation": "relu_preact"},
     r"the preact blocks are full pre-activation already; to choose the placement use block 'basic'"),
    ({"model.gate_bias": 0}, r"gate_bias applies to shortcut gated or shortcut_gated only \(got shortcut 'A'\)"),
    ({"model.shortcut": "gated", "model.shortcut_scale": 0.3}, r"shortcut_scale applies to shortcut scaled only"),
    ({"model.residual_scale": 0.5}, r"residual_scale applies to shortcut scaled only"),
    ({"model.shortcut_dropout": 0.2, "model.shortcut": "B"}, r"shortcut_dropout applies to shortcut dropout only"),
    ({"model.shortcut": "dropout", "model.shortcut_dropout": 1.0}, r"model.shortcut_dropout: Input should be less than 1"),
    ({"model.shortcut": "scaled", "model.shortcut_scale": float("inf")}, r"shortcut_scale: Input should be a finite number"),
    ({"model.activation": "post"}, r"model.activation: Input should be 'original', 'bn_after_add'"),
    ({"model.shortcut": "highway"}, r"'scaled', 'gated', 'shortcut_gated' or 'dropout'"),
    ({"model.n": [2, 0, 2]}, r"model.n: .*units per stage"),
])  # fmt: skip
def test_unsupported_combinations_say_what_is_supported(overrides, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(TrainConfig(), overrides)
