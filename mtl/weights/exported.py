"""Importing an ``mtl export`` folder (:mod:`mtl.weights.export`) back into a pipeline.

A ``pretrain`` export becomes the pipeline's pretrain ``best.pt`` (encoder, head, class names and metric
as they were); a ``metatrain`` export its metatrain ``best.pt``; a ``classifier`` export too, from the
method state it was adapted from (the fitted task is left out: ``mtl adapt`` fits a new one). Every
tensor comes back bit for bit under its key: the weights are loaded into the pipeline's network, which
checks keys and shapes, and saved from it.
"""

from __future__ import annotations

import torch

from mtl.config import Config, upgrade
from mtl.errors import MtlError
from mtl.methods import Method
from mtl.weights.convert import Converted, Layout, check_tensors
from mtl.weights.export import describe, flatten, from_source, is_export
from mtl.weights.files import Source

__all__ = ["EXPORT"]


def _recognise(source: Source, cfg: Config) -> bool:
    return is_export(source)


def _check(source: Source, cfg: Config, layout: Layout) -> None:
    """The export's backbone and, for a trained method, the method and its batch-norm mode must be the
    pipeline's (their state dicts differ otherwise)."""
    info = describe(source)
    theirs = info["config"]
    if theirs["backbone"]["name"] != cfg.backbone.name:
        raise MtlError(
            f"{source.label} is an mtl export of backbone {theirs['backbone']['name']}; the pipeline's "
            f"backbone is {cfg.backbone.name}: add --set backbone.name={theirs['backbone']['name']}"
        )
    if info["stage"] == "pretrain":
        return
    method = info.get("method") or "mtl"
    bn = upgrade(theirs)["mtl"]["bn"]
    keys = {"method": (method, cfg.method), "mtl.bn": (bn, cfg.section("mtl").bn)}
    for key, (ours, pipeline) in keys.items():
        if ours != pipeline:
            raise MtlError(
                f"{source.label} is an mtl {info['stage']} export with {key} {ours}; the pipeline has "
                f"{pipeline}: add --set {key}={ours}"
            )


def _convert(source: Source, cfg: Config, expected: dict[str, torch.Tensor]) -> Converted:
    payload = from_source(source)
    stage = payload["stage"]
    kept = {k: payload[k] for k in ("class_names", "metric") if k in payload}
    notes = [f"read: an mtl {stage} export of mtl {describe(source).get('mtl_version', '?')}"]
    if stage == "pretrain":
        kept["head"] = payload.get("head", {})
        return Converted("pretrain", payload["encoder"], tensors=len(source.obj), extra=kept, notes=notes)
    state = payload if stage == "metatrain" else payload["state"]
    if stage == "classifier":
        kept.setdefault("class_names", [])
        notes.append("read: the method state the classifier was adapted from (its fitted task is left out)")
    return Converted(
        "metatrain",
        None,
        tensors=len(source.obj),
        finish=lambda method: _load_state(method, state, source.label),
        extra=kept,
        notes=notes,
    )


def _load_state(method: Method, state: dict, label: str) -> list[str]:
    """Check the export's tensors against the method's own state (keys, shapes), then load them."""
    own = method.state()
    ours, _, _ = flatten(own)
    theirs, _, _ = flatten({k: v for k, v in state.items() if k in own})
    check_tensors(ours, theirs, label=label, target=f"the pipeline's {method.name} model")
    method.load_state(state)
    return []


EXPORT = Layout(
    name="mtl-export",
    title="an mtl export (model.safetensors + config.json of `mtl export`)",
    backbone="the export's own",
    stage="metatrain",
    stage_of=lambda source: "pretrain" if describe(source)["stage"] == "pretrain" else "metatrain",
    recognise=_recognise,
    check=_check,
    convert=_convert,
)
