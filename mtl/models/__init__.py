"""Backbones. Importing this package (``import mtl.models``, or any module of it) registers
``resnet12``, ``resnet12_paper``, ``resnet12_tf``, ``resnet25`` and ``conv4`` with timm, so that
``timm.create_model("resnet12", num_classes=0)`` works."""

from mtl.models import base_learner, ss  # noqa: E402,F401  (mtl.models.ss without an import of its own)
from mtl.models import conv4 as _conv4  # noqa: F401
from mtl.models import resnet as _resnet  # noqa: F401
from mtl.models import resnet12_tf as _resnet12_tf  # noqa: F401
