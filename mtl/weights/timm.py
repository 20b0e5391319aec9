"""Any timm model's weights, for pipelines whose backbone is ``timm:<model>``.

From a local file (a timm ``state_dict`` as ``.safetensors``, ``.pth`` or ``.bin``, maybe wrapped as
``{"state_dict": ...}`` / ``{"model": ...}``) or from the Hugging Face hub as ``hf-hub:<repo>``, through
timm's own pretrained loading. mtl's :class:`~mtl.models.backbone.TimmBackbone` holds the timm model as
``.model`` and builds it without classifier (``num_classes=0``): keys gain ``model.``, and the file's
classifier (timm's ``pretrained_cfg["classifier"]``, e.g. ``fc.*``, ``head.*``) is dropped.

The paper pipelines forbid these weights: their test classes are ImageNet classes, which ImageNet
pretraining has seen. A pipeline that carries a published number (``paper.acc``) refuses them.
"""

from __future__ import annotations

import torch

from mtl.config import Config
from mtl.errors import MtlError
from mtl.weights.convert import Converted, Layout, few, state_dict_of
from mtl.weights.files import HUB_PREFIX, Source

__all__ = ["TIMM"]

_PREFIX = "timm:"


def _model_name(cfg: Config) -> str:
    return cfg.backbone.name[len(_PREFIX) :]


def _recognise(source: Source, cfg: Config) -> bool:
    """A hub id, or, for a timm pipeline, any dict of tensors no other layout claimed (tried last)."""
    if source.kind == "hub":
        return True
    if not cfg.backbone.name.startswith(_PREFIX) or source.kind not in ("torch", "safetensors"):
        return False
    try:
        return bool(state_dict_of(source)[0])
    except MtlError:
        return False


def _check(source: Source, cfg: Config, layout: Layout) -> None:
    if not cfg.backbone.name.startswith(_PREFIX):
        raise layout.wrong_backbone(source, cfg, "use a pipeline with backbone.name: timm:<model>")
    if cfg.paper.acc is not None:
        raise MtlError(
            f"the pipeline carries a published number (paper.acc {cfg.paper.acc}) and its test classes are "
            f"ImageNet classes, which timm/hub weights have seen: {source.label} would leak them (a pipeline "
            "without paper.acc takes them, its results not comparable with the paper's)"
        )


def _classifier(model_name: str) -> tuple[str, ...]:
    """The timm model's classifier module name(s), e.g. ``("fc",)``, ``("head", "head_dist")``."""
    import timm

    name = timm.models.get_pretrained_cfg(model_name)
    names = getattr(name, "classifier", None) if name is not None else None
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _convert(source: Source, cfg: Config, expected: dict[str, torch.Tensor]) -> Converted:
    if source.kind == "hub":
        return _from_hub(source, cfg)
    tensors, notes = state_dict_of(source)
    if all(k.startswith("model.") for k in tensors):  # saved from mtl's TimmBackbone itself
        tensors = {k[len("model.") :]: v for k, v in tensors.items()}
    heads = tuple(f"{c}." for c in _classifier(_model_name(cfg)))
    dropped = sorted(k for k in tensors if f"model.{k}" not in expected and k.startswith(heads))
    if dropped:
        notes.append(
            f"dropped: {few(dropped)} (the timm classifier; mtl builds the model with num_classes=0)"
        )
    encoder = {f"model.{k}": v for k, v in tensors.items() if k not in set(dropped)}
    return Converted(
        "pretrain",
        encoder,
        name_in_file=lambda key: key.removeprefix("model."),
        tensors=len(tensors),
        notes=notes,
    )


def _from_hub(source: Source, cfg: Config) -> Converted:
    """Fetch ``hf-hub:<repo>`` with timm (its config first: the architecture must be the pipeline's)."""
    import timm
    from timm.models import _hub

    repo, wanted = source.label[len(HUB_PREFIX) :], _model_name(cfg)
    try:
        architecture = _hub.load_model_config_from_hf(repo)[1]
        if architecture != wanted.split(".")[0]:  # the pipeline may name a tag: resnet18.a1_in1k
            raise MtlError(
                f"{source.label} is a timm {architecture}; the pipeline's backbone is {cfg.backbone.name}: "
                f"add --set backbone.name=timm:{architecture}"
            )
        model = timm.create_model(source.label, pretrained=True, num_classes=0, in_chans=cfg.data.channels)
    except MtlError:
        raise
    except Exception as exc:  # the hub's and timm's errors (network, missing repo, bad files): one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MtlError(f"could not load {source.label} through timm: {reason}") from None
    encoder = {f"model.{k}": v for k, v in model.state_dict().items()}
    note = f"read: {architecture} from the hub by timm (num_classes=0: its classifier is not loaded)"
    return Converted(
        "pretrain",
        encoder,
        name_in_file=lambda key: key.removeprefix("model."),
        tensors=len(encoder),
        notes=[note],
    )


TIMM = Layout(
    name="timm",
    title="timm weights",
    backbone="timm:<model>",
    stage="pretrain",
    recognise=_recognise,
    check=_check,
    convert=_convert,
)
