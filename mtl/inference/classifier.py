"""An adapted classifier: a trained method fitted to one task's classes, saved once by ``mtl adapt
--save`` and applied by ``mtl predict`` to any number of images.

The file is a checkpoint of stage ``classifier`` (atomic write, ``weights_only`` load)::

    {"stage": "classifier", "config": {...}, "method": "mtl", "state": {encoder, θ, ...},
     "fitted": {what Method.fit returned: θ' for MTL, the support embeddings for ProtoNet, ...},
     "classes": [...], "preprocess": {"image_size", "channels", "mean", "std", "resize"},
     "adapted": {"steps", "start", "support_images"}}

Predicting runs the same code as ``mtl adapt`` after its fit, so the predictions are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtl import config, methods
from mtl.data.augment import Preprocess
from mtl.data.prepare.images import BadImage, to_pixels
from mtl.errors import MtlError
from mtl.methods import Method
from mtl.methods.episodic import extract_features
from mtl.runtime import checkpoint, outputs
from mtl.runtime import device as devices
from mtl.runtime.stage_folders import CLASSIFIER

__all__ = ["CLASSIFIER_FILE", "STAGE", "Classifier", "embed", "load_trained"]

STAGE = CLASSIFIER
# What a classifier may be saved over: only an earlier classifier (never a pretrain or metatrain one).
CLASSIFIER_FILE = outputs.Kind(
    "a classifier that mtl adapt --save wrote", lambda path: checkpoint.stage_of(path) == STAGE
)


def _config(saved: dict, path: Path) -> config.Config:
    """The resolved config a checkpoint carries, validated as a pipeline is."""
    try:
        return config.from_dict(saved["config"])
    except MtlError as exc:
        raise MtlError(f"{path} carries a config mtl refuses ({exc})") from None
    except KeyError:
        raise MtlError(f"{path} has no config: not a checkpoint mtl wrote") from None


def check_steps(steps: int | None) -> None:
    """``--steps``: a count of gradient steps, bounded like the pipeline's inner steps."""
    if steps is not None and not 0 <= steps <= config.MAX_STEPS:
        raise MtlError(f"--steps: must be 0 .. {config.MAX_STEPS:,} (the paper: 100), got {steps:,}")


def load_trained(
    checkpoint_path: str | Path, device: str = "auto", steps: int | None = None
) -> tuple[config.Config, Method, torch.device]:
    """A metatrain checkpoint's config and method (eval mode, on the resolved device); ``steps``
    replaces its test-time gradient steps, refused for a method that takes none."""
    check_steps(steps)
    path = Path(checkpoint_path).expanduser()
    ckpt = checkpoint.load(path, stage="metatrain")
    cfg = _config(ckpt, path)
    dev = devices.resolve(device)
    method = methods.build(cfg, name=methods.method_of(ckpt), state=ckpt, source=path).to(dev).eval()
    if steps is not None:
        if method.test_steps is None:
            raise MtlError(f"--steps: {method.label} takes no gradient steps on a support set")
        method.test_steps = steps
    return cfg, method, dev


def input_size(cfg: config.Config) -> int:
    """The side of the images the encoder is given: resized, then (``data.resize``) centre-cropped."""
    return cfg.data.resize or cfg.data.image_size


Images = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


def model_pixels(cfg: config.Config, images: Images) -> np.ndarray | torch.Tensor:
    """uint8 images at the model's input: ``(n, S, S, C)`` (``S``: :func:`input_size`) as they are;
    any other size or channel count (an ``(n, H, W, C)`` array, or a list of ``(H, W[, C])`` arrays)
    resized as ``mtl adapt`` resizes decoded files (the whole image to a square, bicubic)."""
    size, channels = input_size(cfg), cfg.data.channels
    exact = isinstance(images, (np.ndarray, torch.Tensor)) and images.dtype in (np.uint8, torch.uint8)
    if exact and tuple(images.shape[1:]) == (size, size, channels):
        return images
    arrays = [np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x) for x in images]
    for x in arrays:
        if x.dtype != np.uint8 or not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3, 4))):
            raise MtlError(f"images must be uint8 (H, W) or (H, W, 1 | 3 | 4), got {x.dtype} {x.shape}")
    if not arrays:
        raise MtlError("no images given")
    return np.stack([to_pixels(x, size, channels) for x in arrays])


def embed_pixels(cfg: config.Config, method: Method, images: Images, dev: torch.device) -> torch.Tensor:
    """uint8 images (any size: :func:`model_pixels`) -> :meth:`Method.embed` ``(n, ...)``."""
    pixels = model_pixels(cfg, images)
    pre = Preprocess.for_data(cfg.data)
    return extract_features(
        lambda b: method.embed(pre(b)), pixels, batch_size=cfg.test.batch_size, device=dev
    )


def embed(cfg: config.Config, method: Method, paths: list[Path], dev: torch.device) -> torch.Tensor:
    """Decode ``paths``, preprocess them as training did and embed them (:meth:`Method.embed`):
    ``(len(paths), ...)`` float32."""
    d = cfg.data
    size = input_size(cfg)
    pixels = np.empty((len(paths), size, size, d.channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            pixels[i] = to_pixels(path, size, d.channels)
        except BadImage as exc:
            raise MtlError(exc.about(path)) from None  # "x.png is a PDF document, not an image"
    return embed_pixels(cfg, method, pixels, dev)


@dataclass(repr=False)
class Classifier:
    """``method`` fitted to ``classes``: ``fitted`` holds the task's tensors (:meth:`Method.fit`)."""

    cfg: config.Config
    method: Method
    fitted: dict[str, torch.Tensor]
    classes: list[str]
    adapted: dict

    @classmethod
    def adapt(
        cls,
        checkpoint_path: str | Path,
        support: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | list[int],
        classes: list[str] | None = None,
        *,
        steps: int | None = None,
        device: str = "auto",
    ) -> Classifier:
        """A metatrain checkpoint's method adapted to in-memory ``support`` images, uint8
        ``(n, S, S, C)``, with ``labels`` ``(n,)`` in ``[0, N)``; ``classes`` names them (default
        ``"0" .. "N-1"``)."""
        cfg, method, dev = load_trained(checkpoint_path, device, steps)
        y = torch.as_tensor(labels, dtype=torch.long, device=dev)
        way = int(y.max()) + 1
        classes = classes if classes is not None else [str(i) for i in range(way)]
        if len(classes) != way or len(y) != len(support) or set(y.tolist()) != set(range(way)):
            raise MtlError(f"labels must cover 0..{len(classes) - 1}, one per support image and class name")
        with torch.no_grad():
            fitted = method.fit(embed_pixels(cfg, method, support, dev), y, way)
        adapted = {"steps": method.test_steps, "start": method.init_note(way), "support_images": len(y)}
        return cls(cfg, method, fitted, list(classes), adapted)

    def __repr__(self) -> str:
        return (
            f"Classifier(method={self.method.name!r}, classes={self.classes!r}, "
            f"steps={self.adapted.get('steps')}, support_images={self.adapted.get('support_images')})"
        )

    @torch.no_grad()
    def predict(self, images: Images) -> torch.Tensor:
        """In-memory uint8 images ``(m, H, W, C)`` (resized to the model's input as ``mtl adapt``
        resizes files) -> class probabilities ``(m, N)`` (one batch)."""
        dev = next(iter(self.fitted.values())).device
        return torch.from_numpy(self.probabilities_of(embed_pixels(self.cfg, self.method, images, dev)))

    @torch.no_grad()
    def probabilities(self, paths: Sequence[str | Path]) -> np.ndarray:
        """``(len(paths), N)`` class probabilities of the image files at ``paths``, all in one batch (a
        method whose batch norm is transductive, such as MAML, sees them together)."""
        dev = next(iter(self.fitted.values())).device
        x = embed(self.cfg, self.method, [Path(p) for p in paths], dev)
        return self.probabilities_of(x)

    @torch.no_grad()
    def probabilities_of(self, x: torch.Tensor) -> np.ndarray:
        """``(n, N)`` class probabilities of embedded images ``x`` (:meth:`Method.embed`)."""
        logits = self.method.predict(self.fitted, x, len(self.classes))
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def save(self, path: str | Path) -> None:
        """Write the classifier (what ``mtl adapt --save`` writes and ``mtl predict`` reads). It
        replaces only an earlier classifier, and never writes inside a run folder
        (:mod:`mtl.runtime.outputs`)."""
        path, d = Path(path).expanduser(), self.cfg.data
        outputs.check_file("Classifier.save", path, CLASSIFIER_FILE, example="classifier.pt")
        checkpoint.save(
            path,
            {
                "stage": STAGE,
                "config": self.cfg.to_dict(),
                "method": self.method.name,
                "state": self.method.state(),
                "fitted": {k: v.detach().cpu() for k, v in self.fitted.items()},
                "classes": self.classes,
                "preprocess": {
                    "image_size": d.image_size,
                    "channels": d.channels,
                    "mean": d.mean,  # None: the default of the channels
                    "std": d.std,
                    "resize": d.resize,
                },
                "adapted": self.adapted,
            },
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Classifier:
        """A classifier :meth:`save` (or ``mtl adapt --save``) wrote, on ``device``."""
        path = Path(path).expanduser()
        saved = checkpoint.load(path, stage=STAGE)
        cfg = _config(saved, path)
        dev = devices.resolve(device)
        with checkpoint.fitting(path, "a classifier mtl adapt saves"):
            name, state = str(saved["method"]), dict(saved["state"])
            fitted = {k: v.to(dev) for k, v in saved["fitted"].items()}
            classes, adapted = [str(c) for c in saved["classes"]], dict(saved["adapted"])
        method = methods.build(cfg, name=name, state=state, source=path).to(dev).eval()
        return cls(cfg, method, fitted, classes, adapted)
