"""The ``README.md`` model card of an ``mtl export`` folder (Hugging Face's YAML front matter + Markdown)."""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]

_WHAT = {
    "pretrain": "the feature extractor Θ after many-shot pretraining on the base classes",
    "metatrain": "a meta-trained few-shot model (for MTL: the frozen encoder with its scaling/shifting "
    "weights, and the base learner's meta-learned initialisation θ)",
    "classifier": "a few-shot classifier adapted to its own classes by `mtl adapt --save`",
}


def model_card(info: dict[str, Any]) -> str:
    """A short card: what the weights are, their input, how to load them."""
    cfg, inp, bb = info["config"], info["input"], info["backbone"]
    widths = "-".join(str(w) for w in bb["widths"]) if bb.get("widths") else "its default widths"
    tag = "image-classification" if info["stage"] == "classifier" else "image-feature-extraction"
    method = f", method `{info['method']}`" if info.get("method") else ""
    what = _WHAT[info["stage"]]
    resize = f"resized to {inp['resize']}, centre-cropped to " if inp.get("resize") else "resized to "
    classes = info.get("class_names")
    lines = [
        "---",
        "tags:",
        "- few-shot-learning",
        "- meta-transfer-learning",
        "- mtl",
        f"pipeline_tag: {tag}",
        "---",
        "",
        f"# {cfg['name']}: mtl {info['stage']} weights",
        "",
        f"{what[0].upper()}{what[1:]}{method}, exported by mtl {info['mtl_version']} "
        f"(Meta-Transfer Learning, Sun et al., CVPR 2019).",
        "",
        f"- backbone: `{bb['name']}` ({widths}), {info['feature_dim']}-d features",
        f"- input: {inp['channels']}-channel images {resize}{inp['image_size']}x{inp['image_size']}, "
        f"pixels / 255, normalised with mean {inp['mean']} and std {inp['std']}",
        f"- dataset: `{cfg['data']['dataset']}`",
    ]
    if info.get("way"):
        lines.append(f"- way: {info['way']}" + (f" ({', '.join(classes)})" if classes else ""))
    metric = info["checkpoint"].get("metric") or {}
    if metric.get("val_acc") is not None:
        lines.append(f"- validation accuracy: {metric['val_acc']:.2f} ± {metric.get('val_ci95') or 0:.2f}%")
    lines += [
        "",
        "`model.safetensors` holds every tensor of the checkpoint; `config.json` says what they are, with",
        "the full pipeline config.",
        "",
        "## Use",
        "",
        "```python",
        "import mtl",
        'encoder = mtl.load_encoder("path/to/this/folder")  # preprocessed (B, C, H, W) -> (B, D) features',
        "```",
        "",
        "or continue with mtl's stages: `mtl import path/to/this/folder PIPELINE`.",
        "",
    ]
    return "\n".join(lines)
