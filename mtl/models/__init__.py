"""Backbones. Importing this package registers ``resnet12`` and ``resnet25`` with timm."""

from mtl.models import resnet as _resnet  # noqa: F401
