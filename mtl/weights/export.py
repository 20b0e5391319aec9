"""``mtl export``: any mtl stage checkpoint as a folder a model hub (Hugging Face) accepts, and back.

The folder holds ``model.safetensors`` (every tensor of the checkpoint, one flat dict: ``encoder.<key>``,
``head.<key>``, ``theta.W``, ``state.encoder.<key>``, ``fitted.W``, ...), ``config.json`` (what the weights
are: stage, method, backbone, input preprocessing, feature width, way, class names, the full pipeline
config, and what is needed to rebuild the checkpoint) and a ``README.md`` model card. The safetensors
header carries the same description (metadata key ``mtl``), so the file alone can be imported again.

:func:`read_payload` turns an export, or any stage checkpoint file, into the checkpoint's dict: the
tensors come back bit for bit under the same keys.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mtl.config import Config, from_dict
from mtl.data.augment import Preprocess
from mtl.errors import MtlError
from mtl.models.backbone import backbone_for
from mtl.runtime import atomic, checkpoint, outputs
from mtl.runtime.stage_folders import CHECKPOINT_STAGES
from mtl.version import __version__
from mtl.weights import card, files
from mtl.weights.files import EXPORT_WEIGHTS, Source

__all__ = ["EXPORT_FOLDER", "EXPORT_FORMAT", "export", "from_source", "read_payload"]

EXPORT_FORMAT = 1
EXPORT_FILES = (EXPORT_WEIGHTS, "config.json", "README.md")
# Checkpoint entries that are not weights: JSON-able ones travel in config.json's "checkpoint".
_CARRIED = ("method", "class_names", "metric", "classes", "preprocess", "adapted", "imported")
_DROPPED = ("format", "version", "stage", "config", "resume", "hard_tasks")  # training state, or rebuilt


def read_payload(path: str | Path) -> dict[str, Any]:
    """The dict of a stage checkpoint (``pretrain``/``metatrain``/``classifier`` ``.pt``) or of an export
    (its folder or ``model.safetensors``): ``stage``, ``config`` and the stage's entries."""
    path = Path(path).expanduser()
    if path.is_dir() or path.suffix == ".safetensors":
        source = files.read(str(path))
        if not is_export(source):
            raise MtlError(f"{source.label} is a safetensors file but not an mtl export (no 'mtl' metadata)")
        return from_source(source)
    stage = checkpoint.stage_of(path)  # a peek; the load below checks the whole file
    if stage not in CHECKPOINT_STAGES:
        checkpoint.load(path, stage="stage")  # raises its one-line reason (missing, empty, YAML, corrupt)
        raise MtlError(f"{path} is a {stage} checkpoint; mtl exports pretrain, metatrain and classifier ones")
    return checkpoint.load(path, stage=stage)


def is_export(source: Source) -> bool:
    """Whether a read file is an ``mtl export``'s weights (its safetensors header describes them)."""
    return source.kind == "safetensors" and "mtl" in source.metadata


def describe(source: Source) -> dict[str, Any]:
    """The export's ``config.json`` contents, from the safetensors header (or the file beside it)."""
    try:
        info = json.loads(source.metadata["mtl"])
    except (KeyError, ValueError):
        beside = source.path.with_name("config.json") if source.path else None
        if beside is None or not beside.is_file():
            raise MtlError(f"{source.label} has no mtl description (metadata 'mtl' or config.json)") from None
        info = json.loads(beside.read_text(encoding="utf-8"))
    if info.get("mtl_export") != EXPORT_FORMAT or info.get("stage") not in CHECKPOINT_STAGES:
        raise MtlError(f"{source.label} is not an mtl export of format {EXPORT_FORMAT}")
    return info


def from_source(source: Source) -> dict[str, Any]:
    """Rebuild the checkpoint dict of an export: tensors regrouped as they were, carried entries back."""
    info = describe(source)
    kept = info["checkpoint"]
    payload: dict[str, Any] = {"stage": info["stage"], "config": info["config"]}
    payload.update({k: _from_json(k, v) for k, v in kept.items() if k != "groups"})
    tensors = dict(source.obj)
    for group in sorted(kept["groups"], key=len, reverse=True):  # "state.encoder" before "state"
        prefix = group + "."
        members = {k[len(prefix) :]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        _put(payload, group.split("."), members)
    for key, tensor in tensors.items():  # tensors outside any group: nested by their dots
        _put(payload, key.split("."), tensor)
    return payload


def _put(root: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        root = root.setdefault(part, {})
    root[path[-1]] = value


def flatten(payload: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Every tensor of the checkpoint's weight entries under a dotted name, the groups (dicts of tensors,
    e.g. state dicts, whose own keys hold dots) and the entries left out (not tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    groups: list[str] = []
    skipped: list[str] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj
        elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            groups.append(path)  # a state dict (or an empty one, such as an import's head)
            tensors.update({f"{path}.{k}": v for k, v in obj.items()})
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{path}.{key}")
        else:
            skipped.append(path)

    for key, value in payload.items():
        if key not in _CARRIED and key not in _DROPPED:
            walk(value, key)
    return tensors, groups, skipped


def _is_export_folder(folder: Path) -> bool:
    """Whether ``folder`` is empty or an earlier export: its own three files and nothing else, with a
    config.json that says so."""
    try:
        names = {p.name for p in folder.iterdir()}
        if not names:
            return True
        info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return names == set(EXPORT_FILES) and isinstance(info, dict) and info.get("mtl_export") == EXPORT_FORMAT


# What `mtl export --force` may replace: an earlier export (or an empty folder), nothing else.
EXPORT_FOLDER = outputs.Kind("an mtl export", _is_export_folder)


def export(checkpoint_path: str | Path, out: str | Path, *, force: bool = False) -> tuple[Path, dict]:
    """Write the export folder ``out`` of a stage checkpoint; returns it and its description.

    ``out`` must not exist or, with ``force``, be an earlier export (or an empty folder), replaced
    only once the new folder is complete; it is never a run folder, nor holds or lies in the input.
    """
    out, source = Path(out).expanduser(), Path(checkpoint_path).expanduser()
    if out.is_dir() and not force:
        empty, earlier = not any(out.iterdir()), _is_export_folder(out)
        what = "an empty folder" if empty else "an earlier export" if earlier else "a folder"
        hint = " or add --force to replace it" if earlier else ""
        raise MtlError(f"{out} exists ({what}); choose a new folder{hint}")
    outputs.check_folder("OUT", out, inputs=[outputs.Input("CHECKPOINT", source)], whole=EXPORT_FOLDER)
    payload = read_payload(source)
    tensors, groups, skipped = flatten(payload)
    info = _info(payload, groups, len(tensors))
    # safetensors refuses tensors that share memory or are not contiguous: every one gets its own copy.
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", "mtl": json.dumps(info)}
    _write_folder(out, flat, metadata, info, force)
    info["skipped"] = skipped
    return out, info


def _write_folder(out: Path, flat: dict, metadata: dict, info: dict, force: bool) -> None:
    """Build the folder beside ``out``, then move it into place: ``out`` is never half written."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        os.chmod(tmp, 0o777 & ~atomic.current_umask())  # mkdtemp's 0700 would hide it from colleagues
    except OSError as exc:
        raise MtlError(f"cannot write {out}: {exc.strerror or exc}") from None
    kept = "the earlier export is kept" if out.exists() else "nothing was written"
    try:
        save_file(flat, str(tmp / EXPORT_WEIGHTS), metadata=metadata)
        os.chmod(tmp / EXPORT_WEIGHTS, 0o666 & ~atomic.current_umask())  # safetensors writes it 0600
        (tmp / "config.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(card.model_card(info), encoding="utf-8")
        old = None
        if out.exists() and force:
            old = out.with_name(f".{out.name}.replaced")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise MtlError(f"cannot write {out}: {reason}; {kept}") from None


def _info(payload: dict[str, Any], groups: list[str], count: int) -> dict[str, Any]:
    """config.json: what the weights are, and what rebuilds the checkpoint."""
    cfg = from_dict(payload["config"])
    stage, d = payload["stage"], cfg.data
    net = backbone_for(cfg)
    pre = Preprocess.for_data(d)
    widths = [f["num_chs"] for f in getattr(net, "feature_info", []) if f["module"].startswith("layer")]
    return {
        "mtl_export": EXPORT_FORMAT,
        "mtl_version": __version__,
        "stage": stage,
        "method": payload.get("method") if stage != "pretrain" else None,
        "backbone": {"name": cfg.backbone.name, "widths": widths or None, "in_chans": d.channels},
        "input": {
            "image_size": d.image_size,
            "channels": d.channels,
            "resize": d.resize,
            "mean": pre.mean,
            "std": pre.std,
            "pixels": "RGB (or grey) / 255, resized to `resize` then centre-cropped to image_size, "
            "then (x - mean) / std",
        },
        "feature_dim": int(net.num_features),
        "way": _way(payload, cfg),
        "class_names": list(payload.get("classes", [])) if stage == "classifier" else None,
        "tensors": count,
        "checkpoint": {"groups": groups, **{k: _to_json(payload[k]) for k in _CARRIED if k in payload}},
        "config": payload["config"],
    }


def _way(payload: dict[str, Any], cfg: Config) -> int | None:
    if payload["stage"] == "classifier":
        return len(payload.get("classes", []))
    theta = payload.get("theta")
    if payload["stage"] == "metatrain":
        return int(theta["W"].shape[0]) if isinstance(theta, dict) and "W" in theta else cfg.meta.way
    return None


def _to_json(value: Any) -> Any:
    """NaN is not JSON (an imported checkpoint's metric holds NaN): it travels as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(key: str, value: Any) -> Any:
    if key == "metric" and isinstance(value, dict):
        return {k: (math.nan if v is None and k != "epoch" else v) for k, v in value.items()}
    return value
