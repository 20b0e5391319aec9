"""Backbones. Importing this package registers ``resnet12``, ``resnet12_paper``, ``resnet12_tf`` and
``resnet25`` and ``conv4`` with timm."""

from mtl.models import conv4 as _conv4  # noqa: F401
from mtl.models import resnet as _resnet  # noqa: F401
from mtl.models import resnet12_tf as _resnet12_tf  # noqa: F401
