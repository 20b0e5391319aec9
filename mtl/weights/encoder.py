"""``mtl.load_encoder``: the feature extractor of any mtl checkpoint, ready to embed images."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mtl import config, methods
from mtl.models.backbone import backbone_for
from mtl.runtime import checkpoint as checkpoint_file
from mtl.weights.export import read_payload

__all__ = ["load_encoder"]


def load_encoder(checkpoint: str | Path) -> nn.Module:
    """The encoder of a stage checkpoint (pretrain, metatrain of any method, a classifier of
    ``mtl adapt --save``) or of an ``mtl export`` folder, on the CPU in eval mode.

    It maps preprocessed images ``(B, C, H, W)`` (the checkpoint's ``data.image_size``, ``channels``,
    ``mean``/``std``: see its config) to ``(B, D)`` features. A meta-trained encoder is rebuilt by its
    method (``mtl.methods.get(name)(encoder, cfg).load_state(...)``), so MTL's SS weights are in it.
    """
    payload = read_payload(checkpoint)
    cfg = config.from_dict(payload["config"])
    encoder = backbone_for(cfg)
    source = Path(checkpoint)
    if payload["stage"] == "pretrain":
        with checkpoint_file.fitting(source, "the model its config describes"):
            checkpoint_file.load_weights(encoder, payload["encoder"], "encoder")
        return encoder.eval()
    name, state = (
        (methods.method_of(payload), payload)
        if payload["stage"] == "metatrain"
        else (payload["method"], payload["state"])
    )
    return methods.build(cfg, encoder, name=name, state=state, source=source).encoder.eval()
