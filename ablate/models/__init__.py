"""The ResNet design space (He et al. 2015: CIFAR and ImageNet nets; 2016: unit variants), its registry,
parameter and MAC counts, and lesions (units deleted from a trained net; Veit et al. 2016).

Example::

    >>> from ablate.models import count_params, create_model, list_models, model_spec
    >>> model = create_model("resnet20", in_channels=1, num_classes=10)
    >>> count_params(model_spec("resnet20")), len(list_models("resnet20*"))
    (269722, 3)
"""

from ablate.models.counting import count_macs, count_params
from ablate.models.lesion import DeletedUnit, UnitSite, delete_units, unit_sites
from ablate.models.registry import (
    ModelInput,
    create_model,
    default_input,
    imagenet_spec,
    list_models,
    model_spec,
    register_model,
    registry_name,
    spec_for_depth,
)
from ablate.models.resnet import ResNet, build_model

__all__ = [
    "DeletedUnit",
    "ModelInput",
    "ResNet",
    "UnitSite",
    "build_model",
    "count_macs",
    "count_params",
    "create_model",
    "delete_units",
    "default_input",
    "imagenet_spec",
    "list_models",
    "model_spec",
    "register_model",
    "registry_name",
    "spec_for_depth",
    "unit_sites",
]
