"""``mtl adapt``: few-shot classification of the user's own images with a meta-trained checkpoint.

The support folder ``DIR/<class>/*.jpg`` defines the task: ``N >= 2`` classes (sorted by name, label =
index) with any number of images each. The meta-trained SS encoder maps every image to a feature, then
the base learner θ = (W, b) is adapted on the support features exactly as in meta-testing::

    support images (n, S, S, C) -> features x_s (n, D), labels y_s (n,) in [0, N)
    θ init: W (N, D), b (N,)  -> ``steps`` gradient steps at mtl.inner_lr -> W', b'
    query images (m, S, S, C) -> features x_q (m, D) -> softmax(x_q W'ᵀ + b') (m, N)

θ initialisation: when ``N`` equals the checkpoint's way, row ``i`` of the meta-learned W, b belongs to
the ``i``-th support class in sorted order (meta-training saw classes in random order, so rows carry no
class identity). Otherwise every class starts from the mean of the meta-learned rows (``W.mean(0)``,
``b.mean()``), as metatest does when the test way differs from training's.

That is MTL's checkpoint; any method's adapts through the method's one-task hooks
(:meth:`~mtl.methods.base.Method.embed`, ``fit``, ``predict``): MAML, for one, adapts its whole
network on the support images.

The support loss is the mean cross-entropy over all ``n`` support images, so classes with different
numbers of images are fine (a class with more images weighs more, as in any plain classifier).

The query folder is either flat (unlabelled) or holds class folders named like support classes
(labelled: accuracy and the confusion matrix are reported). ``save`` writes the fitted classifier
(:mod:`mtl.inference.classifier`) for ``mtl predict``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtl.data.prepare.formats.common import class_dirs, image_files
from mtl.errors import MtlError
from mtl.inference.classifier import CLASSIFIER_FILE, Classifier, embed, load_trained
from mtl.inference.predictions import CONFUSION, CONFUSION_TABLE, PREDICTIONS, Predictions
from mtl.runtime.outputs import Input, check_file

__all__ = ["adapt_folders", "check_confusion", "check_outputs", "query_files"]


def adapt_folders(
    checkpoint_path: str | Path,
    support: str | Path,
    query: str | Path,
    *,
    out: str | Path | None = None,
    save: str | Path | None = None,
    steps: int | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> dict:
    """Adapt on ``support``, classify ``query``, print a table and optionally write a CSV (``out``)
    and the adapted classifier (``save``).

    Returns:
        ``{"classes": [...], "predictions": [{"image", "prediction", "probability", "label", "probs"}],
        "accuracy": percent or None, "steps": int or None, "theta_init": how the task started}``;
        ``label`` is None for an unlabelled query folder, ``probs`` maps each class to its probability;
        ``"written"``: the files written (CSV, confusion matrix, classifier).
    """
    support, query = Path(support).expanduser(), Path(query).expanduser()
    out_path, save_path = (Path(p).expanduser() if p is not None else None for p in (out, save))
    reads = [Input("--checkpoint", Path(checkpoint_path).expanduser()), Input("--support", support)]
    reads.append(Input("--query", query))
    check_outputs(reads, out_path, save_path)
    by_class = _support_files(support)
    queries = query_files(query, list(by_class))
    if queries[0][1] is not None:
        check_confusion(reads, out_path, save_path)
    cfg, method, dev = load_trained(checkpoint_path, device, steps)

    classes = list(by_class)
    sup_paths = [p for files in by_class.values() for p in files]
    y_s = torch.tensor([i for i, files in enumerate(by_class.values()) for _ in files], device=dev)
    x = embed(cfg, method, sup_paths + [p for p, _ in queries], dev)
    x_s, x_q = x[: len(sup_paths)], x[len(sup_paths) :]
    with torch.no_grad():
        fitted = method.fit(x_s, y_s, len(classes))
    start = method.init_note(len(classes))
    adapted = {"steps": method.test_steps, "start": start, "support_images": len(sup_paths)}
    classifier = Classifier(cfg, method, fitted, classes, adapted)
    names = [p.relative_to(query).as_posix() for p, _ in queries]
    found = Predictions(classes, names, [label for _, label in queries], classifier.probabilities_of(x_q))
    written = found.write(out_path) if out_path is not None else []
    if save_path is not None:
        classifier.save(save_path)
        written.append(save_path)
    if not quiet:
        how, n = (
            ("fitted", "") if method.test_steps is None else ("adapted θ", f" in {method.test_steps} steps")
        )
        print(
            f"{how} ({start}) to {len(classes)} classes on {len(sup_paths)} support images{n}; "
            f"{len(queries)} query images"
        )
        print("\n".join(found.lines(out_path)))
    return {
        "classes": classes,
        "predictions": found.rows,
        "accuracy": found.accuracy,
        "steps": method.test_steps,
        "theta_init": start,
        "written": written,
    }


def check_outputs(reads: list[Input], out: Path | None, save: Path | None) -> None:
    """Refuse, before any work, outputs that would replace an input, a run's file or a file of another
    kind (:mod:`mtl.runtime.outputs`): ``out`` the predictions CSV, ``save`` the classifier."""
    if out is not None:
        also = [Input("--save", save)] if save is not None else []
        check_file("--out", out, PREDICTIONS, inputs=reads, others=also, example="predictions.csv",
                   make_folder=True)  # fmt: skip
    if save is not None:
        also = [Input("--out", out)] if out is not None else []
        check_file("--save", save, CLASSIFIER_FILE, inputs=reads, others=also, example="classifier.pt")


def check_confusion(reads: list[Input], out: Path | None, save: Path | None) -> None:
    """For labelled images: the confusion matrix written beside ``out`` is checked as ``out`` is."""
    if out is not None:
        also = [Input("--save", save)] if save is not None else []
        check_file("--out's", out.parent / CONFUSION, CONFUSION_TABLE, inputs=reads, others=also,
                   make_folder=True)  # fmt: skip


def _check_dir(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise MtlError(f"{what} folder not found: {folder}")


def _support_files(support: Path) -> dict[str, list[Path]]:
    """``{class name: image files}`` in sorted class order; every class folder must hold an image."""
    _check_dir(support, "support")
    dirs = class_dirs(support)
    if len(dirs) < 2:
        raise MtlError(
            f"{support}: found {len(dirs)} class folder(s), need at least 2 ({support}/<class>/*.jpg)"
        )
    by_class = {}
    for d in dirs:
        if not (files := image_files(d)):
            raise MtlError(f"support class folder {d} has no images")
        by_class[d.name] = files
    return by_class


def query_files(query: Path, classes: list[str], what: str = "query") -> list[tuple[Path, str | None]]:
    """``(image, label)`` pairs: label None for a flat folder, the class folder's name otherwise."""
    _check_dir(query, what)
    if flat := image_files(query):
        if any(image_files(d) for d in class_dirs(query)):
            raise MtlError(f"{query} holds both images and class folders of images; use one layout")
        return [(p, None) for p in flat]
    dirs = class_dirs(query)
    if not dirs:
        raise MtlError(f"{what} folder {query} has no images (expected *.jpg or <class>/*.jpg in it)")
    pairs = []
    for d in dirs:
        if d.name not in classes:
            raise MtlError(f"{what} class folder {d} is not a support class (support: {', '.join(classes)})")
        if not (files := image_files(d)):
            raise MtlError(f"{what} class folder {d} has no images")
        pairs += [(p, d.name) for p in files]
    return pairs
