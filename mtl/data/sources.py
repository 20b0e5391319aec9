"""From a pipeline's ``data`` section to the prepared splits every stage reads."""

from __future__ import annotations

from pathlib import Path

from mtl.config import DataConfig
from mtl.data.glyphs.dataset import ensure_glyphs
from mtl.data.prepared import Split, load_manifest, load_split
from mtl.errors import MtlError


def dataset_dir(data: DataConfig) -> Path:
    """The prepared dataset folder: generated on first use for ``glyphs``, else ``data.root`` itself."""
    if data.dataset == "glyphs":
        g = data.glyphs
        return ensure_glyphs(
            Path(data.root).expanduser(),
            classes=g.classes,
            images_per_class=g.images_per_class,
            image_size=data.image_size,
            channels=data.channels,
            preset=g.preset,
            seed=g.seed,
        )
    return Path(data.root).expanduser()


def load_splits(data: DataConfig, names: tuple[str, ...]) -> dict[str, Split]:
    """Load the named splits (memory-mapped) of the pipeline's dataset."""
    root = dataset_dir(data)
    prepared = load_manifest(root).get("dataset")
    if data.dataset != "glyphs" and prepared is not None and prepared != data.dataset:
        raise MtlError(
            f"{root} holds a prepared {prepared} dataset, but the pipeline says data.dataset: {data.dataset}"
        )
    return {name: load_split(root, name) for name in names}
