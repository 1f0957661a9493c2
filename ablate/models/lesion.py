"""Lesions of a trained net: residual units deleted at test time (Veit, Wilber and Belongie, NeurIPS 2016,
"Residual Networks Behave Like Ensembles of Relatively Shallow Networks", sec. 4).

Deleting unit ``i`` removes its residual branch F and keeps its shortcut: the unit then computes
``h(x)`` (the identity, option A's zero-padding, a B/C projection, a scaled or gated shortcut) followed
by what the unit applies after the addition (:meth:`ablate.models.blocks.BasicBlock.without_branch`).
Where the shortcut is the identity, the net is then exactly the net built without that unit (the same
weights elsewhere). A plain net's unit has no shortcut: deleting one that keeps its shape leaves the
identity; one that changes the shape (the first unit of each stage after the first) cannot be deleted.

Example::

    >>> from ablate.config import ModelSpec
    >>> from ablate.models import build_model
    >>> model = build_model(ModelSpec(n=3), num_classes=10)                      # ResNet-20
    >>> [u.name for u in unit_sites(model) if u.transition]
    ['stages.1.0', 'stages.2.0']
    >>> lesioned = delete_units(model, ["stages.0.1", "stages.2.0"])             # a copy; model is untouched
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ablate.models.resnet import ResNet

__all__ = ["DeletedUnit", "UnitSite", "delete_units", "unit_sites"]


@dataclass(frozen=True)
class UnitSite:
    """One unit of a net, in network order, and whether it can be deleted."""

    name: str  # qualified module name, "stages.<stage index>.<unit index>" (model.get_submodule(name))
    stage: int  # 1-based: stage 1 is the first
    transition: bool  # the first unit of a stage after the first: where the shape changes
    deletable: bool  # False only for a plain unit that changes the shape


class DeletedUnit(nn.Module):
    """A unit with its residual branch deleted: ``forward(x) = unit.without_branch(x)``.

    The unit's modules stay inside (its BN after the addition, a projection shortcut), so the lesioned
    net keeps every weight of the trained one.
    """

    def __init__(self, unit: nn.Module):
        super().__init__()
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit.without_branch(x)


def unit_sites(model: ResNet) -> list[UnitSite]:
    """Every unit of ``model`` in network order, its stage, whether it is a stage transition and deletable."""
    return [
        UnitSite(
            name=f"stages.{i}.{j}",
            stage=i + 1,
            transition=i > 0 and j == 0,
            deletable=unit.shortcut is not None or not unit.reshapes,
        )
        for i, stage in enumerate(model.stages)
        for j, unit in enumerate(stage)
    ]


def delete_units(model: ResNet, names: Iterable[str]) -> ResNet:
    """A copy of ``model`` with the units ``names`` (:attr:`UnitSite.name`) deleted; ``model`` is untouched.

    ValueError for a name that is not a unit of the net, and for a plain unit that changes the shape
    (naming it and the units that can be deleted).
    """
    sites = {site.name: site for site in unit_sites(model)}
    names = list(dict.fromkeys(names))
    unknown = [name for name in names if name not in sites]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a unit of {model.spec.name}; its units are "
                         f"stages.0.0 to {list(sites)[-1]}")
    refused = [name for name in names if not sites[name].deletable]
    if refused:
        raise ValueError(
            f"{model.spec.name}: unit {', '.join(refused)} changes the shape (a stride-2 conv and new channels) "
            "and has no shortcut, so nothing would remain to carry its input on; in a plain net only units that "
            "keep the shape can be deleted (every unit but the first of each stage after the first)"
        )
    lesioned = copy.deepcopy(model)
    for name in names:
        stage, index = (int(part) for part in name.split(".")[1:])
        lesioned.stages[stage][index] = DeletedUnit(lesioned.stages[stage][index])
    return lesioned
