"""``mtl predict``: classify images with a classifier that ``mtl adapt --save`` wrote.

Each argument is an image file (unlabelled) or a folder: flat (unlabelled) or of class folders
named like the classifier's classes (labelled: accuracy and confusion matrix). All the images are
classified in one batch, as ``mtl adapt`` classifies its queries, so the same images get the same
predictions as they did there.
"""

from __future__ import annotations

from pathlib import Path

from mtl.errors import MtlError
from mtl.inference.adapt import check_confusion, check_outputs, query_files
from mtl.inference.classifier import Classifier
from mtl.inference.predictions import Predictions
from mtl.runtime.outputs import Input

__all__ = ["predict"]


def predict(
    classifier_path: str | Path,
    images: list[str | Path],
    *,
    out: str | Path | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> dict:
    """Classify ``images`` (files or folders); print a table and optionally write a CSV.

    Returns ``{"classes", "predictions", "accuracy", "written"}`` as
    :func:`mtl.inference.adapt.adapt_folders` does (``written``: the files it wrote).
    """
    if not images:
        raise MtlError("give the images to classify: files or folders (mtl predict CLASSIFIER IMAGES...)")
    out_path = Path(out).expanduser() if out is not None else None
    reads = [Input("CLASSIFIER", Path(classifier_path).expanduser())]
    reads += [Input("IMAGES", Path(arg).expanduser()) for arg in images]
    check_outputs(reads, out_path, None)
    classifier = Classifier.load(Path(classifier_path).expanduser(), device)
    paths, names, labels = [], [], []
    for arg in images:
        path = Path(arg).expanduser()
        if path.is_file():
            paths.append(path), names.append(str(arg)), labels.append(None)
        elif path.is_dir():
            for p, label in query_files(path, classifier.classes, "image"):
                paths.append(p), names.append(p.relative_to(path).as_posix()), labels.append(label)
        else:
            raise MtlError(f"image or folder not found: {path}")
    if len({label is None for label in labels}) > 1:
        raise MtlError("some images are labelled (in class folders) and some are not: classify them apart")
    if labels[0] is not None:
        check_confusion(reads, out_path, None)
    found = Predictions(classifier.classes, names, labels, classifier.probabilities(paths))
    written = found.write(out_path) if out_path is not None else []
    if not quiet:
        print(f"{len(paths)} images, {len(classifier.classes)} classes: {', '.join(classifier.classes)}")
        print("\n".join(found.lines(out_path)))
    return {
        "classes": classifier.classes,
        "predictions": found.rows,
        "accuracy": found.accuracy,
        "written": written,
    }
