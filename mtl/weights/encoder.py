"""``mtl.load_encoder``: the feature extractor of any mtl checkpoint, ready to embed images."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mtl import config, methods
from mtl.errors import MtlError
from mtl.weights.export import read_payload
from mtl.weights.importer import backbone

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
    encoder = backbone(cfg)
    try:
        if payload["stage"] == "pretrain":
            encoder.load_state_dict(payload["encoder"])
        else:
            name, state = (
                (payload.get("method", "mtl"), payload)
                if payload["stage"] == "metatrain"
                else (payload["method"], payload["state"])
            )
            method = methods.get(name)(encoder, cfg)
            method.load_state(state)
            encoder = method.encoder
    except (RuntimeError, KeyError) as exc:  # load_state_dict's key/shape report is pages long
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MtlError(f"{checkpoint}: its weights do not fit its own config ({reason})") from None
    return encoder.eval()
