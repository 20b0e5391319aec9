"""Omniglot (Lake et al. 2015): 1,623 handwritten characters of 50 alphabets, 20 drawings each.

``--source`` is the folder holding both ``images_background/`` (30 alphabets) and
``images_evaluation/`` (20 alphabets), as ``images_background.zip`` and ``images_evaluation.zip``
unpack; each is ``<Alphabet>/characterNN/*.png`` (105×105, black strokes on white). Also accepted:
either of those two folders (its parent is used) and a folder whose only sub-folder holds them.
The zips themselves must be unpacked first.

Splits, by alphabet so that no alphabet is shared between splits:

- train: every character of ``images_background``;
- val: the first half of ``images_evaluation``'s alphabets, sorted by name (with an odd count, the
  smaller half);
- test: the other half.

With a single evaluation alphabet, its characters (sorted) are halved the same way instead. This is
not Vinyals et al.'s 1200/423 character split (which mixes alphabets and adds rotated copies as extra
classes). A class is ``<Alphabet>/characterNN``; labels follow sorted alphabet, then character names.
Images are stored grey, dark strokes on light as in the files.
"""

from __future__ import annotations

from pathlib import Path

from mtl.data.formats.common import SplitSource, class_dirs, from_files, image_files, unknown_layout
from mtl.data.formats.miniimagenet import search_roots
from mtl.errors import MtlError

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
EXPECTED = (f"{BACKGROUND}/ and {EVALUATION}/, each <Alphabet>/characterNN/*.png",)

Characters = list[tuple[str, list[Path]]]  # (class name "<Alphabet>/characterNN", its image files)


def read(source: Path, **_) -> tuple[str, dict[str, SplitSource]]:
    if source.is_dir() and source.name in (BACKGROUND, EVALUATION):
        source = source.parent
    for root in search_roots(source):
        background, evaluation = root / BACKGROUND, root / EVALUATION
        if background.is_dir() or evaluation.is_dir():
            for folder in (background, evaluation):
                if not folder.is_dir():
                    raise MtlError(f"{folder}: folder not found ({_missing_hint(folder)})")
            return "omniglot", _splits(background, evaluation)
        if zips := [root / f"{n}.zip" for n in (BACKGROUND, EVALUATION) if (root / f"{n}.zip").is_file()]:
            raise MtlError(f"{zips[0]}: unpack it first (it unpacks to {zips[0].stem}/ next to it)")
    raise unknown_layout("Omniglot", source, EXPECTED)


def _missing_hint(folder: Path) -> str:
    if folder.with_suffix(".zip").is_file():
        return f"unpack {folder.with_suffix('.zip').name} next to it"
    return f"Omniglot needs both {BACKGROUND}/ and {EVALUATION}/"


def _splits(background: Path, evaluation: Path) -> dict[str, SplitSource]:
    alphabets = _alphabets(evaluation)
    if len(alphabets) > 1:
        half = len(alphabets) // 2
        val = [c for _, chars in alphabets[:half] for c in chars]
        test = [c for _, chars in alphabets[half:] for c in chars]
    else:
        # One alphabet cannot be split by alphabet; halving its characters still gives two splits.
        chars = alphabets[0][1]
        val, test = chars[: len(chars) // 2], chars[len(chars) // 2 :]
    train = [c for _, chars in _alphabets(background) for c in chars]
    return {"train": from_files(dict(train)), "val": from_files(dict(val)), "test": from_files(dict(test))}


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
