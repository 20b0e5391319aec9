"""The stage folders of a run, ``<checkpoints>/<run name>/<folder>/``, named once.

Each :class:`StageFolder` says which ``mtl`` command writes the folder, what it writes there (a
``best.pt`` checkpoint, or a ``results.json`` table), which command reads it next and the command's
one-line help. The stage commands (:mod:`mtl.cli.stages`), ``mtl import``'s next-step hint,
``mtl report`` and its figures, ``mtl export`` and the missing-checkpoint message all read this list.
It imports nothing of mtl but its errors, so any module may import it, and the command line
answers ``--help`` without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtl.errors import MtlError

__all__ = [
    "ABLATION",
    "BY_COMMAND",
    "CHECKPOINT_FILE",
    "CHECKPOINT_STAGES",
    "CLASSIFIER",
    "COMPARE",
    "FOLDERS",
    "MAKE",
    "METATEST",
    "METATRAIN",
    "MissingCheckpoint",
    "PRETRAIN",
    "RESULTS_FILE",
    "RESULT_FOLDERS",
    "StageFolder",
]

CHECKPOINT_FILE = "best.pt"  # the kept checkpoint of a training stage (``last.pt`` beside it)
RESULTS_FILE = "results.json"  # a scored table (:func:`mtl.results.results_file.read_results` reads it)


@dataclass(frozen=True)
class StageFolder:
    """One stage folder: the command that writes it and what is in it."""

    command: str  # the `mtl` sub-command (and `mtl.<command>` function) that writes the folder
    folder: str  # its name under <checkpoints>/<run name>/; also the Makefile target that runs it
    writes: str  # CHECKPOINT_FILE (a checkpoint of stage `folder`) or RESULTS_FILE
    help: str  # the command's one-line help
    next: str | None = None  # the command that reads its best.pt (what `mtl import` says to run next)

    @property
    def checkpoint(self) -> bool:
        """Whether it holds a training stage's checkpoints (``best.pt``, ``last.pt``)."""
        return self.writes == CHECKPOINT_FILE

    @property
    def results(self) -> bool:
        """Whether it holds a results table, which ``mtl report`` and its figures read."""
        return self.writes == RESULTS_FILE


PRETRAIN = StageFolder(
    command="pretrain",
    folder="pretrain",
    writes=CHECKPOINT_FILE,
    help="Stage 1: pretrain the encoder on the base classes.",
    next="metatrain",
)
METATRAIN = StageFolder(
    command="metatrain",
    folder="metatrain",
    writes=CHECKPOINT_FILE,
    help="Stage 2: meta-train the pipeline's method (MTL: SS and θ).",
    next="metatest",
)
METATEST = StageFolder(
    command="metatest",
    folder="metatest",
    writes=RESULTS_FILE,
    help="Stage 3: accuracy ± 95% CI on fixed test episodes.",
)
ABLATION = StageFolder(
    command="ablate",
    folder="ablation",
    writes=RESULTS_FILE,
    help="The ablation: NC, FT, MTL, MTL + HT, from scratch.",
)
COMPARE = StageFolder(
    command="compare",
    folder="compare",
    writes=RESULTS_FILE,
    help="Every method on the same test episodes, side by side.",
)

FOLDERS = (PRETRAIN, METATRAIN, METATEST, ABLATION, COMPARE)  # in the order a user runs them
BY_COMMAND = {s.command: s for s in FOLDERS}
RESULT_FOLDERS = tuple(s.folder for s in FOLDERS if s.results)

# `mtl adapt --save`'s checkpoint: a trained method fitted to one task's classes, written where the
# user says (no stage folder), read by `mtl predict`.
CLASSIFIER = "classifier"
# Every stage a checkpoint file of mtl's can be (its "stage" entry).
CHECKPOINT_STAGES = (*(s.folder for s in FOLDERS if s.checkpoint), CLASSIFIER)


# The command that makes a training stage's checkpoint, named in the missing-checkpoint message.
MAKE = {s.folder: f"make {s.folder}" for s in FOLDERS if s.checkpoint}


class MissingCheckpoint(MtlError):
    """No checkpoint of ``stage`` at ``path``; the command line rewords it with the exact command."""

    def __init__(self, path: Path, stage: str, command: str | None = None) -> None:
        self.path, self.stage = path, stage
        command = command or MAKE.get(stage)
        super().__init__(f"no {stage} checkpoint at {path}" + (f"; run `{command}` first" if command else ""))
