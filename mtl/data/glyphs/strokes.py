"""Strokes: the drawing primitives of the glyphs dataset. Random gently bent cubic Béziers, chained
into strokes, assembled into a class template, sampled densely and splatted into anti-aliased ink
coverage. Coordinates live in the glyph box ``[-1, 1]²`` until the renderer maps them to pixels.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Template", "assemble", "cubic", "curve_points", "splat", "stroke"]

_BOX = 0.85  # strokes end inside [-_BOX, _BOX]²
_CHUNK = 1 << 22  # splat elements processed at once, bounds memory


def cubic(rng: np.random.Generator, start: np.ndarray, length: tuple[float, float]) -> np.ndarray:
    """``(4, 2)`` control points of a gently bent cubic from ``start`` in a random direction."""
    size = rng.uniform(*length)
    for _ in range(20):  # a direction that stays inside the box, so strokes keep their length
        angle = rng.uniform(0, 2 * np.pi)
        end = start + size * np.array([np.cos(angle), np.sin(angle)])
        if np.abs(end).max() <= _BOX:
            break
    else:
        end = start - size * start / max(np.linalg.norm(start), 1e-6)  # towards the centre
    chord = end - start
    normal = np.array([-chord[1], chord[0]])
    bend = rng.uniform(-0.5, 0.5, size=2)
    return np.stack(
        [start, start + chord / 3 + bend[0] * normal, start + 2 * chord / 3 + bend[1] * normal, end]
    )


def stroke(rng: np.random.Generator) -> np.ndarray:
    """``(4, 2)`` or ``(7, 2)`` control points: one cubic, or two chained ones sharing an end point."""
    first = cubic(rng, rng.uniform(-0.7, 0.7, size=2), (0.9, 1.5))
    if rng.random() < 0.5:
        return first
    second = cubic(rng, first[3], (0.6, 1.2))
    if rng.random() < 0.5:  # smooth continuation; otherwise the chain keeps a corner
        tangent = first[3] - first[2]
        second[1] = (
            first[3] + tangent / max(np.linalg.norm(tangent), 1e-6) * np.linalg.norm(second[3] - first[3]) / 3
        )
    return np.concatenate([first, second[1:]])


Template = tuple[np.ndarray, np.ndarray, np.ndarray]  # points (P, 2), stroke per point (P,), cubics (S, 4)


def assemble(strokes: list[np.ndarray]) -> Template:
    """A class's strokes ``(4 or 7, 2)`` as points ``(P, 2)``, stroke id per point ``(P,)`` and the point
    indices of each cubic ``(S, 4)``."""
    points = np.concatenate(strokes)
    stroke_of = np.concatenate([np.full(len(s), i) for i, s in enumerate(strokes)])
    segments, offset = [], 0
    for s in strokes:
        segments += [np.arange(offset + 3 * k, offset + 3 * k + 4) for k in range((len(s) - 1) // 3)]
        offset += len(s)
    return points, stroke_of, np.stack(segments)


def curve_points(cubics: np.ndarray, samples: int) -> np.ndarray:
    """``(n, S * samples, 2)`` points evenly spaced in ``t`` along ``n`` images' cubics ``(n, S, 4, 2)``."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    bernstein = np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)
    n, s = cubics.shape[:2]
    return np.einsum("tk,nskd->nstd", bernstein, cubics).reshape(n, s * samples, 2)


def splat(points: np.ndarray, keep: np.ndarray, width: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased ink coverage ``(n, size, size)`` in [0, 1] of dense curve samples.

    Args:
        points: ``(n, M, 2)`` curve samples as (x, y) pixel coordinates; pixel centres sit at ``i + 0.5``.
        keep: ``(n, M)`` bool, False for samples of strokes an image does not draw.
        width: ``(n,)`` pen width in pixels.

    Every sample stamps ``clip(width/2 + 0.5 - dist, 0, 1)`` on the pixels around it, keeping the max per
    pixel: with samples much closer than a pixel this is the coverage at the distance to the curve.
    """
    n, m = keep.shape
    half = (width / 2 + 0.5).astype(np.float32)
    out = np.zeros(n * size * size, np.float32)
    radius = math.ceil(half.max()) if n else 0  # stamps beyond reach of the widest pen add nothing
    offsets = np.arange(-radius, radius + 1)
    per_chunk = max(1, _CHUNK // (m * len(offsets) ** 2))
    for a in range(0, n, per_chunk):
        q = points[a : a + per_chunk].astype(np.float32)
        pix = np.floor(q).astype(np.int32)[..., None] + offsets  # (b, M, 2, K) pixel column / row
        # Squared distances per axis, infinite where the pixel is off the image or the sample unused.
        d2 = (pix + 0.5 - q[..., None]) ** 2
        d2[(pix < 0) | (pix >= size) | ~keep[a : a + per_chunk, :, None, None]] = np.inf
        dist2 = d2[:, :, 1, :, None] + d2[:, :, 0, None, :]  # (b, M, K rows, K cols)
        hit = dist2 < half[a : a + per_chunk, None, None, None] ** 2
        i, s, r, c = np.nonzero(hit)
        cov = np.minimum(half[a + i] - np.sqrt(dist2[hit]), 1.0)
        flat = ((a + i) * size + pix[i, s, 1, r]) * size + pix[i, s, 0, c]
        np.maximum.at(out, flat, cov)
    return out.reshape(n, size, size)
