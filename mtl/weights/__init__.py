"""Weights from elsewhere into mtl, and mtl's weights out: ``mtl import``, ``mtl export``,
``mtl.load_encoder``.

* :func:`import_weights` (:mod:`~mtl.weights.importer`): recognises a file's layout
  (:mod:`~mtl.weights.layouts`: the official MTL PyTorch and TensorFlow checkpoints, FEAT and RFS
  ResNet-12s, timm weights, mtl exports), converts it and writes the stage checkpoint the next stage of a
  pipeline reads.
* :func:`export` (:mod:`~mtl.weights.export`): a stage checkpoint as a folder a model hub accepts
  (``model.safetensors``, ``config.json``, ``README.md``).
* :func:`load_encoder` (:mod:`~mtl.weights.encoder`): the encoder of any checkpoint or export, in eval mode.
"""

from mtl.weights.encoder import load_encoder
from mtl.weights.export import export
from mtl.weights.importer import Imported, import_weights

__all__ = ["Imported", "export", "import_weights", "load_encoder"]
