"""mtl: Meta-Transfer Learning (SS + hard-task meta-batches) for few-shot image classification.

Importing the package registers its backbones (``resnet12``, ``resnet25``) with timm, so
``timm.create_model("resnet12", num_classes=0)`` works after ``import mtl``.
"""

__version__ = "0.1.0"

from mtl import models as _models  # noqa: E402,F401  (registers the timm backbones)
