"""mtl: Meta-Transfer Learning (SS + hard-task meta-batches) for few-shot image classification.

``import mtl`` is light: the pieces a script needs are attributes of the package, each imported on
first use (torch with the first of them), so the command line answers ``--help`` at once::

    cfg = mtl.load_config("glyphs-1shot", ["meta.shot=5"])     # a pipeline, as the CLI reads it
    mtl.pretrain(cfg, "checkpoints"); mtl.metatrain(cfg, "checkpoints"); mtl.metatest(cfg, "checkpoints")
    clf = mtl.Classifier.adapt("checkpoints/glyphs-1shot/metatrain/best.pt", images, labels)
    probs = clf.predict(more_images)                            # (m, way)
    net = mtl.build_backbone("resnet12"); mtl.models.ss.attach(net)   # SS on every convolution
"""

from mtl.version import __version__

# name -> (module, attribute): imported on first use, so `import mtl` stays light. (Folder-based
# adapt and predict are mtl.inference.adapt.adapt_folders and mtl.inference.predict.predict.)
_API = {
    "Config": ("mtl.config", "Config"),
    "build_backbone": ("mtl.models.backbone", "build_backbone"),
    "models": ("mtl.models", None),
    "ss": ("mtl.models.ss", None),
    "methods": ("mtl.methods", None),
    "pretrain": ("mtl.stages.pretrain", "pretrain"),
    "metatrain": ("mtl.stages.metatrain", "metatrain"),
    "metatest": ("mtl.stages.metatest", "metatest"),
    "ablate": ("mtl.stages.ablate", "ablate"),
    "compare": ("mtl.stages.compare", "compare"),
    "Classifier": ("mtl.inference.classifier", "Classifier"),
    "load_encoder": ("mtl.weights", "load_encoder"),
}
__all__ = ["__version__", "load_config", *_API]


def load_config(pipeline=None, overrides=()):
    """A pipeline as the command line reads it: a file or a shipped pipeline's name (None: the
    defaults), ``key=value`` overrides applied, validated against every registered method's section
    (:func:`mtl.config.load`, after importing the methods that register them)."""
    import sys

    import mtl.methods  # noqa: F401  (registering the built-in methods hands their sections over)
    from mtl.config import load, pipeline_file

    if pipeline is not None and (note := pipeline_file.shadowed(pipeline)):
        print(note, file=sys.stderr)
    return load(pipeline, overrides)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mtl' has no attribute {name!r}")
    import importlib

    module, attr = _API[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted(__all__)
