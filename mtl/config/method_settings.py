"""The settings of the baseline methods, one section each (``protonet:``, ``maml:``, ``matchingnet:``,
``siamese:``); MTL's own are the ``meta:`` section of :mod:`mtl.config.schema`."""

from __future__ import annotations

from dataclasses import dataclass

from mtl.config.limits import MAX_LR, MAX_STEPS
from mtl.config.validation import option

__all__ = ["MAMLConfig", "MatchingNetConfig", "ProtoNetConfig", "SiameseConfig"]


@dataclass
class ProtoNetConfig:
    lr: float = option(
        1e-3, above=0.0, doc="Adam lr of the encoder (decayed like the meta-LRs: meta.step_size)"
    )
    train_way: int | None = option(None, min=2, doc="classes per training task (default: meta.way)")
    pretrained: bool = option(
        False, doc="start from the pretrain stage's encoder; false: a random one (the paper)"
    )


@dataclass
class MAMLConfig:
    inner_steps: int = option(
        5, min=0, max=MAX_STEPS, doc="gradient steps on each support set in meta-training (the paper: 5)"
    )
    test_inner_steps: int = option(
        10, min=0, max=MAX_STEPS, doc="the same at validation and test (the paper: 10)"
    )
    inner_lr: float = option(
        0.01, min=0.0, max=MAX_LR, doc="α, the inner step size (the paper: 0.01 on miniImageNet)"
    )
    first_order: bool = option(False, doc="drop the second derivatives (first-order MAML)")
    lr: float = option(1e-3, above=0.0, doc="β, Adam's lr of the initialisation (decayed like the meta-LRs)")
    pretrained: bool = option(
        False, doc="start the encoder from the pretrain stage; false: random (the paper)"
    )


@dataclass
class MatchingNetConfig:
    lr: float = option(1e-3, above=0.0, doc="Adam lr (decayed like the meta-LRs)")
    fce: bool = option(False, doc="full-context embeddings: support bi-LSTM, attention LSTM for queries")
    fce_steps: int = option(5, min=1, max=MAX_STEPS, doc="processing steps K of the attention LSTM")
    pretrained: bool = option(
        False, doc="start the encoder from the pretrain stage; false: random (the paper)"
    )


@dataclass
class SiameseConfig:
    lr: float = option(1e-3, above=0.0, doc="Adam lr (decayed like the meta-LRs)")
    pretrained: bool = option(
        False, doc="start the encoder from the pretrain stage; false: random (the paper)"
    )
