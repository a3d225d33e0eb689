"""Models by name: ``small_cnn`` (digits), ``small_cnn1d`` (1-D signals, MNIST-1D),
``resnet20``/``resnet32`` (CIFAR ResNets of He et al. 2016, option-A shortcuts, as used in the NeVe
paper), ``timm:<name>`` and ``torchvision:<name>`` (any model of those libraries, never with
pretrained weights).

Example::

    >>> from neve_tune.models import create_model
    >>> model = create_model("resnet32", num_classes=10, input_shape=(3, 32, 32))
    >>> sum(p.numel() for p in model.parameters())
    464154
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_int, check_shape

__all__ = [
    "MODELS",
    "check_model_available",
    "check_model_name",
    "check_model_options",
    "create_model",
    "register_model",
    "SmallCNN",
    "SmallCNN1d",
    "CifarResNet",
]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn

    return deco


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...], **options) -> nn.Module:
    """Build ``name`` for inputs of ``input_shape`` ((C, H, W) images, (C, L) signals) and
    ``num_classes`` outputs (at least 2: timm reads 0 as "no head" and would return features)."""
    check_model_name(name)
    num_classes = check_int("num_classes", num_classes, minimum=2)  # type: ignore[assignment]
    input_shape = check_shape("input_shape", input_shape)
    if name.startswith("timm:"):
        import timm

        arch = name[5:]
        if arch not in timm.list_models():
            raise ValueError(f"model {name!r}: timm has no architecture {arch!r}")
        kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
        if _accepts_img_size(arch) and "img_size" not in options:  # the option's own wins
            try:
                return timm.create_model(arch, img_size=input_shape[-1], **kwargs, **options)
            except TypeError as e:  # a name the guess matches, whose builder takes no size
                if "img_size" not in str(e):
                    raise
        return timm.create_model(arch, **kwargs, **options)
    if name.startswith("torchvision:"):
        import torchvision

        arch = name[12:]
        if arch not in torchvision.models.list_models():
            raise ValueError(f"model {name!r}: torchvision has no architecture {arch!r}")
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)
    return MODELS[name](num_classes=num_classes, input_shape=input_shape, **options)


# the libraries' prefixes, each with the arguments create_model passes their builders
# itself (a second value is a TypeError)
_SET_BY_CREATE = {
    "timm:": ("pretrained", "num_classes", "in_chans"),
    "torchvision:": ("weights", "num_classes"),
}
_LIBRARIES = tuple(_SET_BY_CREATE)


def check_model_name(name: object, label: str = "model") -> str:
    """``name`` if it names a model: a registered one, or ``timm:<arch>`` /
    ``torchvision:<arch>`` (whether that library has ``arch`` is
    :func:`check_model_available`'s question, as it imports the library)."""
    if isinstance(name, str):
        if name in MODELS or any(name.startswith(p) and name[len(p) :] for p in _LIBRARIES):
            return name
    raise ValueError(
        f"{label} must be one of {sorted(MODELS)}, 'timm:<name>' or "
        f"'torchvision:<name>', got {name!r}"
    )


def check_model_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse an option a registered model's builder does not take (``{"widht": 16}``), so a
    study file's typo fails as it loads, not in its first trial. ``timm:``/``torchvision:``
    models take their library's options, checked when built, except those
    :func:`create_model` sets itself (``pretrained``/``weights``, ``num_classes``,
    ``in_chans``), refused here.

    >>> check_model_options("small_cnn", {"widht": 16})
    Traceback (most recent call last):
    ...
    ValueError: model_options has 'widht', which model 'small_cnn' does not take; it takes ['width']
    """
    for prefix, keys in _SET_BY_CREATE.items():
        taken = sorted(set(options) & set(keys)) if name.startswith(prefix) else []
        if taken:
            raise ValueError(
                f"model_options has {taken[0]!r}, which create_model sets for {prefix}<name> "
                "models (outputs and input channels from the data; never pretrained weights)"
            )
    builder = MODELS.get(name)
    if builder is None:
        return
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n in params if n not in ("num_classes", "input_shape")]
    for key in options:
        if key not in takes:
            raise ValueError(
                f"model_options has {key!r}, which model {name!r} does not take; it takes {takes}"
            )


def check_model_available(name: str, label: str = "model") -> str:
    """``name`` if :func:`create_model` can build it here: for ``timm:``/``torchvision:``
    the library is installed and has the architecture."""
    check_model_name(name, label)
    for prefix, module in (("timm:", "timm"), ("torchvision:", "torchvision.models")):
        if name.startswith(prefix):
            library, arch = prefix[:-1], name[len(prefix) :]
            try:
                lib = importlib.import_module(module)
            except ImportError:
                raise ValueError(
                    f"{label} {name!r} needs {library}, which is not installed"
                ) from None
            if arch not in lib.list_models():
                raise ValueError(f"{label} {name!r}: {library} has no architecture {arch!r}")
    return name


def _accepts_img_size(arch: str) -> bool:
    return any(k in arch for k in ("vit", "deit", "swin", "beit", "eva", "cait", "xcit"))


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks with batch norm, a pooled flatten and a two-layer head."""

    def __init__(
        self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 8, 8), width: int = 32
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"input_shape must be (channels, height, width) for a 2-D CNN, got "
                f"{tuple(input_shape)}"
            )
        c, h, w = input_shape
        width = check_int("width", width, minimum=1)  # type: ignore[assignment]
        if h < 2 or w < 2:  # the max-pool halves them
            raise ValueError(f"input_shape must be at least 2x2 for small_cnn, got {input_shape}")
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * (h // 2) * (w // 2), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("small_cnn")
def small_cnn(num_classes: int, input_shape: tuple[int, ...], width: int = 32) -> nn.Module:
    return SmallCNN(num_classes, input_shape, width)


class SmallCNN1d(nn.Module):
    """Three 1-D conv blocks with batch norm (the last two halve the length), a flatten
    and a linear head: for short signals such as MNIST-1D's 40 samples.

        >>> model = SmallCNN1d(10, (1, 40))
        >>> model(torch.zeros(2, 1, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 40), width: int = 32
    ) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(
                f"input_shape must be (channels, length) for a 1-D CNN, got {tuple(input_shape)}"
            )
        c, length = input_shape
        width = check_int("width", width, minimum=1)  # type: ignore[assignment]

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, 5, stride, 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(c, width, 1), *block(width, width, 2), *block(width, 2 * width, 2)
        )
        out_len = ((length - 1) // 2) // 2 + 1  # two stride-2 convs with padding 2, kernel 5
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * out_len, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("small_cnn1d")
def small_cnn1d(
    num_classes: int, input_shape: tuple[int, ...] = (1, 40), width: int = 32
) -> nn.Module:
    return SmallCNN1d(num_classes, input_shape, width)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else 0
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad == 0:
            return x
        # option A: subsample and zero-pad channels, no parameters
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, n blocks per stage."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, planes_in = [], 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(_BasicBlock(planes_in, planes, 2 if (i > 0 and j == 0) else 1))
                planes_in = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model("resnet20")
def resnet20(num_classes: int, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    return CifarResNet(20, num_classes, _image_channels(input_shape))


@register_model("resnet32")
def resnet32(num_classes: int, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    return CifarResNet(32, num_classes, _image_channels(input_shape))


def _image_channels(input_shape: tuple[int, ...]) -> int:
    """The channels of a (channels, height, width) input; another shape is refused by name
    (a 1-D signal's (C, L) would fail in the first forward)."""
    if len(input_shape) != 3:
        raise ValueError(
            "input_shape must be (channels, height, width) for a CIFAR ResNet, got "
            f"{tuple(input_shape)}"
        )
    return int(input_shape[0])
