"""``mtl adapt``: few-shot classification of the user's own images with a meta-trained checkpoint.

The support folder ``DIR/<class>/*.jpg`` defines the task: ``N >= 2`` classes (sorted by name, label =
index) with any number of images each. The meta-trained SS encoder maps every image to a feature, then
the base learner θ = (W, b) is adapted on the support features exactly as in meta-testing::

    support images (n, S, S, C) -> features x_s (n, D), labels y_s (n,) in [0, N)
    θ init: W (N, D), b (N,)  -> ``steps`` gradient steps at meta.inner_lr -> W', b'
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
(labelled: accuracy is reported).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from mtl import checkpoint, config, methods
from mtl import device as devices
from mtl.atomic import atomic_write
from mtl.data.augment import Preprocess
from mtl.data.formats.common import class_dirs, image_files
from mtl.data.images import BadImage, to_pixels
from mtl.errors import MtlError
from mtl.evaluate import extract_features
from mtl.methods import Method
from mtl.models.backbone import build_backbone

__all__ = ["adapt"]

SHOWN = 20  # query rows printed; the rest go to the CSV only


def adapt(
    checkpoint_path: str | Path,
    support: str | Path,
    query: str | Path,
    *,
    out: str | Path | None = None,
    steps: int | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> dict:
    """Adapt θ on ``support``, classify ``query``, print a table and optionally write a CSV.

    Returns:
        ``{"classes": [...], "predictions": [{"image", "prediction", "probability", "label", "probs"}],
        "accuracy": percent or None, "steps": int, "theta_init": "meta-learned" | "mean of rows"}``;
        ``label`` is None for an unlabelled query folder, ``probs`` maps each class to its probability.
    """
    support, query = Path(support).expanduser(), Path(query).expanduser()
    out_path = _check_out(Path(out).expanduser()) if out is not None else None
    by_class = _support_files(support)
    queries = _query_files(query, list(by_class))
    ckpt = checkpoint.load(Path(checkpoint_path).expanduser(), stage="metatrain")
    cfg = config.from_dict(ckpt["config"])
    dev = devices.resolve(device)
    method = _method(cfg, ckpt, dev)
    if steps is not None:
        if method.test_steps is None:
            raise MtlError(f"--steps: {method.label} takes no gradient steps on a support set")
        method.test_steps = steps

    classes = list(by_class)
    sup_paths = [p for files in by_class.values() for p in files]
    y_s = torch.tensor([i for i, files in enumerate(by_class.values()) for _ in files], device=dev)
    x = _embed(cfg, method, sup_paths + [p for p, _ in queries], dev)
    x_s, x_q = x[: len(sup_paths)], x[len(sup_paths) :]
    with torch.no_grad():
        logits = method.predict(method.fit(x_s, y_s, len(classes)), x_q, len(classes))
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()

    rows = []
    for (path, label), p in zip(queries, probs, strict=True):
        k = int(np.argmax(p))
        rows.append(
            {
                "image": path.relative_to(query).as_posix(),
                "prediction": classes[k],
                "probability": float(p[k]),
                "label": label,
                "probs": dict(zip(classes, map(float, p), strict=True)),
            }
        )
    labelled = queries[0][1] is not None
    correct = sum(r["prediction"] == r["label"] for r in rows)
    result = {
        "classes": classes,
        "predictions": rows,
        "accuracy": 100.0 * correct / len(rows) if labelled else None,
        "steps": method.test_steps,
        "theta_init": method.init_note(len(classes)),
    }
    if out_path is not None:
        _write_csv(out_path, classes, rows, labelled)
    if not quiet:
        print("\n".join(_table(result, len(sup_paths), out_path, correct)))
    return result


def _check_out(out: Path) -> Path:
    """Fail before any work if the CSV cannot be written: a probe file proves the folder is writable
    (``os.access`` says yes to root even on read-only mounts)."""
    if out.is_dir():
        raise MtlError(f"--out {out} is a folder; give a file name such as {out / 'predictions.csv'}")
    if not out.parent.is_dir():
        problem = "is not a folder" if out.parent.exists() else "does not exist"
        raise MtlError(f"--out {out}: {out.parent} {problem}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MtlError(f"--out {out}: cannot write to {out.parent} ({exc.strerror or exc})") from None
    return out


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


def _query_files(query: Path, classes: list[str]) -> list[tuple[Path, str | None]]:
    """``(image, label)`` pairs: label None for a flat folder, the class folder's name otherwise."""
    _check_dir(query, "query")
    if flat := image_files(query):
        if any(image_files(d) for d in class_dirs(query)):
            raise MtlError(f"{query} holds both images and class folders of images; use one layout")
        return [(p, None) for p in flat]
    dirs = class_dirs(query)
    if not dirs:
        raise MtlError(f"query folder {query} has no images (expected *.jpg or <class>/*.jpg in it)")
    pairs = []
    for d in dirs:
        if d.name not in classes:
            raise MtlError(f"query class folder {d} is not a support class (support: {', '.join(classes)})")
        if not (files := image_files(d)):
            raise MtlError(f"query class folder {d} has no images")
        pairs += [(p, d.name) for p in files]
    return pairs


def _method(cfg: config.Config, ckpt: dict, dev: torch.device) -> Method:
    """The checkpoint's method, its trained state loaded, in eval mode on ``dev``."""
    d, bb = cfg.data, cfg.backbone
    encoder = build_backbone(
        bb.name, in_chans=d.channels, widths=bb.widths, drop_rate=bb.drop_rate, image_size=d.image_size
    )
    method = methods.get(ckpt.get("method", "mtl"))(encoder, cfg)
    method.load_state(ckpt)
    return method.to(dev).eval()


def _embed(cfg: config.Config, method: Method, paths: list[Path], dev: torch.device) -> torch.Tensor:
    """Decode ``paths``, preprocess them as training did and embed them (:meth:`Method.embed`):
    ``(len(paths), ...)`` float32."""
    d = cfg.data
    size = d.resize or d.image_size  # as the prepared images reach the encoder: resized, then cropped
    pixels = np.empty((len(paths), size, size, d.channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            pixels[i] = to_pixels(path, size, d.channels)
        except BadImage as exc:
            # PIL's reason often repeats the file name, which already leads the message.
            reason = str(exc).replace(f" '{path}'", "")
            raise MtlError(f"{path}: cannot decode image ({reason})") from None
    pre = Preprocess(d.image_size, d.channels, d.mean, d.std, devices.memory_format(), d.resize)
    return extract_features(
        lambda b: method.embed(pre(b)), pixels, batch_size=cfg.test.batch_size, device=dev
    )


def _write_csv(out: Path, classes: list[str], rows: list[dict], labelled: bool) -> None:
    """One row per query image; written to a temp file beside ``out`` and renamed, so a failure never
    leaves a half-written CSV."""
    header = ["image", "prediction", "probability", *(["label", "correct"] if labelled else [])]
    header += [f"p({c})" for c in classes]
    with atomic_write(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            label = [r["label"], int(r["prediction"] == r["label"])] if labelled else []
            probs = [f"{r['probs'][c]:.4f}" for c in classes]
            writer.writerow([r["image"], r["prediction"], f"{r['probability']:.4f}", *label, *probs])


def _table(result: dict, n_support: int, out: Path | None, correct: int) -> list[str]:
    rows, classes = result["predictions"], result["classes"]
    labelled = result["accuracy"] is not None
    how, steps = ("fitted", "")  # a metric method takes no steps
    if result["steps"] is not None:
        how, steps = "adapted θ", f" in {result['steps']} steps"
    lines = [
        f"{how} ({result['theta_init']}) to {len(classes)} classes on {n_support} support images"
        f"{steps}; {len(rows)} query images"
    ]
    cells = [["image", "prediction", "prob", *(["label", ""] if labelled else [])]]
    for r in rows[:SHOWN]:
        truth = [r["label"], "✓" if r["prediction"] == r["label"] else "✗"] if labelled else []
        cells.append([r["image"], r["prediction"], f"{r['probability']:.3f}", *truth])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    if len(rows) > SHOWN:
        where = f"in {out}" if out is not None else "(write them all with --out predictions.csv)"
        lines.append(f"... {len(rows) - SHOWN} more {where}")
    if labelled:
        lines.append(f"accuracy: {result['accuracy']:.2f}% ({correct}/{len(rows)})")
    return lines
