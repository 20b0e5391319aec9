"""Omniglot (Lake et al. 2015): 1,623 handwritten characters of 50 alphabets, 20 drawings each.

``--source`` is the folder holding ``images_background`` (30 alphabets) and ``images_evaluation``
(20 alphabets), each either unpacked (``<Alphabet>/characterNN/*.png``, 105×105, black strokes on
white) or as the ``.zip`` it is downloaded as (read directly, nothing to unpack). Also accepted:
either of the two folders (its parent is used) and a folder whose only sub-folder holds them.

Two protocols:

- **Vinyals et al.** (``--split-lists DIR``): the standard few-shot protocol. ``DIR`` holds the split
  lists as they circulate in public few-shot code (the ProtoNets code's
  ``data/omniglot/splits/vinyals/{train,val,test}.txt``): one class per line,
  ``<Alphabet>/characterNN/rotDDD``, a character turned by DDD ∈ {000, 090, 180, 270} degrees counter-
  clockwise. Each line is a class; its images are the character's drawings, resized, then rotated
  exactly (quarter turns of the pixel grid). Those lists hold 1,028 × 4 train, 172 × 4 val and
  423 × 4 test classes (Vinyals et al.'s 1,200 training characters are train + val). mtl ships no copy
  of the lists: they are the published protocol, and reading them is what makes the split that one.
- **By alphabet** (no lists): no alphabet is shared between splits. train: every character of
  ``images_background``; val: the first half of ``images_evaluation``'s alphabets, sorted by name
  (with an odd count, the smaller half); test: the other half. With a single evaluation alphabet its
  characters (sorted) are halved the same way instead.

A class is ``<Alphabet>/characterNN`` (with ``/rotDDD`` under the Vinyals protocol); labels follow
the lists' order, or sorted alphabet then character names. Images are stored grey, dark strokes on
light as in the files.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from mtl.data.prepare.archives import UNPACK_ERRORS, read_zip_entries, reason
from mtl.data.prepare.formats.common import (
    IMAGE_SUFFIXES,
    SplitSource,
    class_dirs,
    from_files,
    image_files,
    unknown_layout,
)
from mtl.data.prepare.formats.miniimagenet import search_roots
from mtl.data.prepare.images import Rotated
from mtl.data.prepare.limits import TEXT_BYTES, open_regular, read_capped
from mtl.errors import MtlError

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
EXPECTED = (f"{BACKGROUND}/ and {EVALUATION}/ (folders or .zip), each <Alphabet>/characterNN/*.png",)
ROTATIONS = {"rot000": 0, "rot090": 1, "rot180": 2, "rot270": 3}  # quarter turns, counter-clockwise

Item = Path | bytes
Characters = list[tuple[str, list[Item]]]  # (class name "<Alphabet>/characterNN", its images)


def read(source: Path, *, split_lists: Path | None = None, **_) -> tuple[str, dict[str, SplitSource]]:
    if source.is_dir() and source.name in (BACKGROUND, EVALUATION):
        source = source.parent
    for root in search_roots(source):
        halves = [_half(root, name) for name in (BACKGROUND, EVALUATION)]
        if any(h is not None for h in halves):
            for name, half in zip((BACKGROUND, EVALUATION), halves, strict=True):
                if half is None:
                    raise MtlError(f"{root / name}: folder or .zip not found (Omniglot needs both halves)")
            background, evaluation = halves
            if split_lists is not None:
                return "omniglot-vinyals", _vinyals(Path(split_lists).expanduser(), background + evaluation)
            return "omniglot", _splits(background, evaluation)
    raise unknown_layout("Omniglot", source, EXPECTED)


def _half(root: Path, name: str) -> list[tuple[str, Characters]] | None:
    """``root/<name>/`` or ``root/<name>.zip`` as ``[(alphabet, characters)]``, or None if neither."""
    if (root / name).is_dir():
        return _alphabets(root / name)
    if (root / f"{name}.zip").is_file():
        return _zip_alphabets(root / f"{name}.zip")
    return None


def _zip_alphabets(path: Path) -> list[tuple[str, Characters]]:
    """The alphabets of a downloaded zip (entries ``<name>/<Alphabet>/characterNN/*.png``), as bytes.

    The entries are unpacked into memory, so their declared sizes are checked first and every read is
    capped (:mod:`mtl.data.prepare.archives`): a small zip cannot unpack to gigabytes."""
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            keys, entries = [], []
            for number, entry in enumerate(z.infolist(), 1):
                parts = PurePosixPath(entry.filename).parts
                if entry.is_dir() or len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
                    continue
                keys.append(parts[-3:])
                entries.append((number, entry))
            data = read_zip_entries(path, z, entries)
    except UNPACK_ERRORS as exc:
        raise MtlError(f"{path}: not a readable zip ({reason(exc)})") from None
    by_char: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for (alphabet, char, name), item in zip(keys, data, strict=True):
        by_char.setdefault((alphabet, char), []).append((name, item))
    alphabets: dict[str, Characters] = {}
    for alphabet, char in sorted(by_char):
        files = [item for _, item in sorted(by_char[alphabet, char])]
        alphabets.setdefault(alphabet, []).append((f"{alphabet}/{char}", files))
    if not alphabets:
        raise MtlError(f"{path}: no <Alphabet>/characterNN/*.png entries")
    return list(alphabets.items())


def _vinyals(lists: Path, alphabets: list[tuple[str, Characters]]) -> dict[str, SplitSource]:
    """The splits the lists in ``lists`` define: one class per ``<Alphabet>/characterNN/rotDDD`` line."""
    chars = {name: items for _, cs in alphabets for name, items in cs}
    out = {}
    for split in ("train", "val", "test"):
        path = lists / f"{split}.txt"
        if not path.is_file():
            raise MtlError(f"{path}: split list not found (--split-lists needs train.txt, val.txt, test.txt)")
        classes, items = [], []
        for n, line in enumerate(_list_lines(path), 1):
            char, _, rot = line.rpartition("/")
            if rot not in ROTATIONS or not char:
                raise MtlError(f"{path}, line {n}: expected <Alphabet>/characterNN/rotDDD, got {line!r}")
            if char not in chars:
                raise MtlError(f"{path}, line {n}: character {char} is not in the Omniglot source")
            classes.append(line)
            items.append([Rotated(item, ROTATIONS[rot]) for item in chars[char]])
        if not classes:
            raise MtlError(f"{path}: the split list is empty")
        flat = [x for xs in items for x in xs]
        labels = np.repeat(np.arange(len(classes)), [len(xs) for xs in items])
        owner = np.repeat(np.array(classes, dtype=object), [len(xs) for xs in items])
        out[split] = SplitSource(classes, labels, flat, lambda i, owner=owner: f"{lists} class {owner[i]}")
    return out


def _list_lines(path: Path) -> list[str]:
    """The lines of a split list (a few thousand short lines; a huge file is not one)."""
    with open_regular(path) as f:
        data = read_capped(f, TEXT_BYTES)
    if data is None:
        raise MtlError(f"{path}: over {TEXT_BYTES >> 20} MiB, not a split list")
    try:
        return data.decode("utf-8").split()
    except UnicodeDecodeError:
        raise MtlError(f"{path}: not a text file (a split list has one class per line)") from None


def _splits(
    background: list[tuple[str, Characters]], alphabets: list[tuple[str, Characters]]
) -> dict[str, SplitSource]:
    if len(alphabets) > 1:
        half = len(alphabets) // 2
        val = [c for _, chars in alphabets[:half] for c in chars]
        test = [c for _, chars in alphabets[half:] for c in chars]
    else:
        # One alphabet cannot be split by alphabet; halving its characters still gives two splits.
        chars = alphabets[0][1]
        val, test = chars[: len(chars) // 2], chars[len(chars) // 2 :]
    train = [c for _, chars in background for c in chars]
    return {"train": _split(train), "val": _split(val), "test": _split(test)}


def _split(chars: Characters) -> SplitSource:
    """A split of whole characters: files (unpacked folders) or zip entries (bytes)."""
    if all(isinstance(item, Path) for _, items in chars for item in items):
        return from_files(dict(chars))
    flat = [(name, i) for name, items in chars for i in range(len(items))]
    labels = np.repeat(np.arange(len(chars)), [len(items) for _, items in chars])
    images = [item for _, items in chars for item in items]
    return SplitSource(
        [n for n, _ in chars], labels, images, lambda i: f"{flat[i][0]} (zip entry {flat[i][1] + 1})"
    )


def _alphabets(folder: Path) -> list[tuple[str, Characters]]:
    """``folder/<Alphabet>/<character>/*.png`` as ``[(alphabet, characters)]``, both sorted by name."""
    out = []
    for alphabet in class_dirs(folder):
        chars = [
            (f"{alphabet.name}/{c.name}", files) for c in class_dirs(alphabet) if (files := image_files(c))
        ]
        if chars:
            out.append((alphabet.name, chars))
    if not out:
        raise MtlError(f"{folder}: no alphabets with images (expected {folder}/<Alphabet>/characterNN/*.png)")
    return out
