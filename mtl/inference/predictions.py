"""What ``mtl adapt`` and ``mtl predict`` show and write for a set of classified images: one row
per image (class, probability, probabilities of every class), a printed table, the CSV, and for
labelled images the accuracy and the confusion matrix (printed, and a CSV beside ``--out``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from mtl.errors import MtlError
from mtl.runtime.atomic import atomic_write
from mtl.runtime.outputs import starts_with

__all__ = ["CONFUSION", "CONFUSION_TABLE", "PREDICTIONS", "Predictions"]

SHOWN = 20  # rows printed; the rest go to the CSV only
CONFUSION = "confusion_matrix.csv"  # written beside --out for labelled images
_HEADER = ["image", "prediction", "probability"]  # the first columns of the CSV
_CORNER = "true \\ predicted"  # the confusion matrix's first cell
# What --out may replace: the CSVs written here before, recognised by their first cells.
PREDICTIONS = starts_with("a predictions CSV", ",".join(_HEADER).encode() + b",")
CONFUSION_TABLE = starts_with("a confusion matrix CSV", _CORNER.encode() + b",")


class Predictions:
    """Classified images: ``names`` (how each is shown), ``labels`` (class names, or None each when
    unlabelled), ``probs`` ``(n, N)`` over ``classes``."""

    def __init__(self, classes: list[str], names: list[str], labels: list[str | None], probs: np.ndarray):
        self.classes, self.labels = classes, labels
        self.labelled = labels[0] is not None
        self.rows = []
        for name, label, p in zip(names, labels, probs, strict=True):
            k = int(np.argmax(p))
            self.rows.append(
                {
                    "image": name,
                    "prediction": classes[k],
                    "probability": float(p[k]),
                    "label": label,
                    "probs": dict(zip(classes, map(float, p), strict=True)),
                }
            )
        self.correct = sum(r["prediction"] == r["label"] for r in self.rows)

    @property
    def accuracy(self) -> float | None:
        return 100.0 * self.correct / len(self.rows) if self.labelled else None

    def confusion(self) -> np.ndarray:
        """``(N, N)`` counts: row = true class, column = predicted class, in class order."""
        truth = [r["label"] for r in self.rows]
        return confusion_matrix(truth, [r["prediction"] for r in self.rows], labels=self.classes)

    def write(self, out: Path) -> list[Path]:
        """The CSV (and, labelled, the confusion matrix beside it); each written atomically."""
        header = [*_HEADER, *(["label", "correct"] if self.labelled else [])]
        header += [f"p({c})" for c in self.classes]
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MtlError(f"--out {out}: cannot make {out.parent} ({exc.strerror or exc})") from None
        with atomic_write(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for r in self.rows:
                label = [r["label"], int(r["prediction"] == r["label"])] if self.labelled else []
                probs = [f"{r['probs'][c]:.4f}" for c in self.classes]
                writer.writerow([r["image"], r["prediction"], f"{r['probability']:.4f}", *label, *probs])
        if not self.labelled:
            return [out]
        matrix = out.parent / CONFUSION
        with atomic_write(matrix, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([_CORNER, *self.classes])
            for c, counts in zip(self.classes, self.confusion(), strict=True):
                writer.writerow([c, *map(int, counts)])
        return [out, matrix]

    def lines(self, out: Path | None) -> list[str]:
        """The printed table: the first rows, then accuracy and confusion matrix when labelled."""
        cells = [["image", "prediction", "prob", *(["label", ""] if self.labelled else [])]]
        for r in self.rows[:SHOWN]:
            truth = [r["label"], "✓" if r["prediction"] == r["label"] else "✗"] if self.labelled else []
            cells.append([r["image"], r["prediction"], f"{r['probability']:.3f}", *truth])
        lines = _aligned(cells)
        if len(self.rows) > SHOWN:
            where = f"in {out}" if out is not None else "(write them all with --out predictions.csv)"
            lines.append(f"... {len(self.rows) - SHOWN} more {where}")
        if self.labelled:
            lines.append(f"accuracy: {self.accuracy:.2f}% ({self.correct}/{len(self.rows)})")
            lines.append("confusion matrix (rows: true class, columns: predicted):")
            matrix = [["", *self.classes]]
            matrix += [
                [c, *map(str, counts)] for c, counts in zip(self.classes, self.confusion(), strict=True)
            ]
            lines += ["  " + line for line in _aligned(matrix)]
        return lines


def _aligned(cells: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
