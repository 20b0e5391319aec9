"""Families of look-alike classes for the glyphs preset ``families``.

Class ids come in runs of consecutive ids, one run per family. Family sizes are drawn from the dataset
seed in blocks of six families whose sizes are a shuffled ``1, 2, ..., 6``: every 21 classes hold one
singleton, one pair, ... and one family of six, so some classes have no look-alike and some have five.
A family's base is 3 ordinary glyph strokes and a "mark site", a spot off the base's ink; each member
adds one short mark of its own (a bent cubic about as long as a distractor stroke) that starts near the
site, off the base's ink and apart from the marks of the family's earlier members. Members of a family
therefore share every base control point and differ by one small neighbouring mark (its exact place,
direction and bend), while the bases of two families are independent. Images get mild nuisances (as
``easy``) plus one distractor stroke as long as a mark, so a member is told from its look-alikes only by
the shape and place of its mark on the base. The structure of class ``c`` (its family, its place in it,
its strokes) depends only on ``(seed, c)``: the class count only decides where the last family ends.

Whole families go to one split, lowest ids first, each split ending at the family boundary nearest its
64/16/20 % share (:func:`family_split_ids`): for the default 100 classes and seed 0, train / val / test
hold 63 / 16 / 21 classes in 18 / 4 / 8 families. Class names carry the family (``glyph-0042-f07`` is
class 42 of family 7); :func:`glyph_families`, :func:`family_ids` and :func:`family_of_name` recover it.
"""

from __future__ import annotations

import re

import numpy as np

from mtl.data.glyphs.splits import FRACTIONS, SPLITS
from mtl.data.glyphs.strokes import Template, assemble, cubic, curve_points, stroke
from mtl.errors import MtlError

_SIZES = np.arange(1, 7)  # the family sizes of one block, shuffled per block
_BASE_STROKES = 3  # ordinary glyph strokes every member of a family shares
_MARK_LENGTH = (0.3, 0.5)  # a member's own stroke: short, so look-alikes stay alike
_SITE_GAP = 0.3  # min distance (glyph units) of a family's mark site from its base ink
_SITE_SPREAD = 0.12  # std of a mark's start around the site: members' marks are neighbours
_MARK_GAP = (0.2, 0.18)  # min mean distance of a mark from the base ink, and from each earlier mark
_TRIES = 50
_NAME = re.compile(r"^glyph-\d{4,}-f(\d+)$")
VERSION = 1  # bump when the family structure or strokes change, so existing families caches are redone


def family_bounds(classes: int, seed: int) -> np.ndarray:
    """``(F + 1,)`` first class id of each family covering ids ``0..classes-1``, then ``classes``."""
    sizes: list[int] = []
    block = 0
    while sum(sizes) < classes:
        sizes += [int(s) for s in np.random.default_rng([seed, block, 3]).permutation(_SIZES)]
        block += 1
    bounds = np.cumsum([0, *sizes])
    return np.append(bounds[bounds < classes], classes).astype(np.int64)  # the last family may be cut


def family_ids(classes: int, seed: int) -> np.ndarray:
    """``(classes,)`` int64 family of each class id."""
    bounds = family_bounds(classes, seed)
    return np.repeat(np.arange(len(bounds) - 1, dtype=np.int64), np.diff(bounds))


def glyph_families(classes: int, seed: int) -> list[np.ndarray]:
    """Class ids ``(size,)`` of each family, in family order; their concatenation is ``0..classes-1``."""
    bounds = family_bounds(classes, seed)
    return [np.arange(a, b, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def family_class_names(ids: np.ndarray, seed: int) -> list[str]:
    """Names such as ``glyph-0042-f07`` (class 42 of family 7) for the class ids ``(K,)``."""
    family = family_ids(int(max(ids, default=0)) + 1, seed)
    return [f"glyph-{c:04d}-f{family[c]:02d}" for c in ids]


def family_of_name(name: str) -> int | None:
    """The family in a class name made by :func:`family_class_names`; None for other names."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def family_split_ids(classes: int, seed: int) -> dict[str, np.ndarray]:
    """Class ids of each split, whole families only: lowest ids train, then val, then test.

    Each split ends at the family boundary nearest its miniImageNet share (64 / 16 / 20 %), so the
    counts differ slightly from :func:`~mtl.data.glyphs.splits.split_class_ids`; every split gets >= 1 family.
    """
    if not isinstance(classes, int) or classes < len(SPLITS):
        raise MtlError(f"glyphs classes must be an integer >= {len(SPLITS)}, got {classes!r}")
    bounds = family_bounds(classes, seed)
    if len(bounds) - 1 < len(SPLITS):
        raise MtlError(
            f"glyphs preset 'families' puts whole families in each split, but {classes} classes make only "
            f"{len(bounds) - 1} families with seed {seed}; use more classes"
        )
    inner = bounds[1:-1]
    train_end = min(inner[:-1], key=lambda b: abs(b - FRACTIONS[0] * classes))
    val_end = min(inner[inner > train_end], key=lambda b: abs(b - sum(FRACTIONS) * classes))
    edges = [0, int(train_end), int(val_end), classes]
    return {name: np.arange(edges[i], edges[i + 1], dtype=np.int64) for i, name in enumerate(SPLITS)}


def _samples(controls: np.ndarray, per_cubic: int = 16) -> np.ndarray:
    """``(n, 2)`` points along a stroke's chained cubics, control points ``(4 or 7, 2)``."""
    cubics = np.stack([controls[k : k + 4] for k in range(0, len(controls) - 1, 3)])
    return curve_points(cubics[None], per_cubic)[0]


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance from each sample of ``a`` ``(n, 2)`` to the nearest sample of ``b`` ``(m, 2)``."""
    return float(np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1).mean())


def _nearest(rng: np.random.Generator, draw, score) -> np.ndarray:
    """The first of up to ``_TRIES`` draws ``draw(rng)`` whose ``score`` is >= 0, else the best one."""
    best, best_score = None, -np.inf
    for _ in range(_TRIES):
        x = draw(rng)
        if (value := score(x)) >= 0:
            return x
        if value > best_score:
            best, best_score = x, value
    return best


def _mark(
    rng: np.random.Generator, site: np.ndarray, base: np.ndarray, marks: list[np.ndarray]
) -> np.ndarray:
    """``(4, 2)`` a new member's mark, starting near the family's ``site`` ``(2,)``, off the base samples
    ``(n, 2)`` and apart from every earlier mark's samples: a mark over other ink would hide the difference,
    while marks that are neighbours make the members look alike."""

    def draw(r: np.random.Generator) -> np.ndarray:
        start = np.clip(site + _SITE_SPREAD * r.standard_normal(2), -0.7, 0.7)
        return cubic(r, start, _MARK_LENGTH)

    def score(mark: np.ndarray) -> float:
        pts = _samples(mark)
        apart = [min(_gap(pts, m), _gap(m, pts)) - _MARK_GAP[1] for m in marks]
        return min([_gap(pts, base) - _MARK_GAP[0], *apart])

    return _nearest(rng, draw, score)


def family_template(seed: int, class_id: int) -> Template:
    """Class ``class_id``'s strokes: its family's base strokes, then its own mark."""
    bounds = family_bounds(int(class_id) + 1, seed)
    family, member = len(bounds) - 2, class_id - int(bounds[-2])
    rng = np.random.default_rng([seed, family, 2])
    base = [stroke(rng) for _ in range(_BASE_STROKES)]
    base_pts = np.concatenate([_samples(s) for s in base])
    site = _nearest(
        rng, lambda r: r.uniform(-0.6, 0.6, size=2), lambda x: _gap(x[None], base_pts) - _SITE_GAP
    )
    marks: list[np.ndarray] = []
    for _ in range(member + 1):  # earlier members' marks first: member m's depends on theirs
        marks.append(_mark(rng, site, base_pts, [_samples(m) for m in marks]))
    return assemble([*base, marks[-1]])
