"""The TensorBoard layout: which group and tag every chart of a stage gets.

Tags are laid out for TensorBoard's Scalars page, which groups charts by the part of a tag before its
first ``/`` and sorts groups, and the charts in a group, by name (numbers by value). The groups read
in pipeline order, each stage's "is it learning?" curves first::

    1 pretrain/        loss, train accuracy, validation accuracy    (per epoch)
    2 metatrain/       loss, train accuracy, validation accuracy    (loss, train: its tasks' queries)
    3 metatest/        <method>: test accuracy by episodes scored   (the last point is the result)
                       <method>: accuracy by presentation           (a breakdown, x = its column)
    4 learning rate/   <stage> <parameter group>
    5 throughput/      <stage> images per s | tasks per s
    6 hard tasks/      <stage> pool size, query accuracy of the normal and of the extra tasks, ...
    7 inputs/          <stage> train batch | train task             (images)
    8 parameters/      <stage> <tensor>                             (histograms)
    9 CI bands/        <stage> <accuracy> low | high

A stage folder other than pretrain and metatrain is numbered 3 (metatest, ablation, compare: they
score), and a row of ``ablation/`` or ``compare/`` that meta-trains (folder ``compare/mtl``) 2. Texts
go to their stage's group (``3 metatest/results``) unless given a section, as do any other scalars.
"""

from __future__ import annotations

STAGE_NUMBER = {"pretrain": 1, "metatrain": 2}  # any other stage folder scores (3); see the docstring
LEARNING_RATE, THROUGHPUT, HARD_TASKS = "learning rate", "throughput", "hard tasks"
INPUTS, PARAMETERS, BANDS = "inputs", "parameters", "CI bands"
SECTIONS = (LEARNING_RATE, THROUGHPUT, HARD_TASKS, INPUTS, PARAMETERS, BANDS)  # after the stages' groups
SECTION_NUMBER = {section: number for number, section in enumerate(SECTIONS, 4)}
_NO_PARENTHESES = str.maketrans("()", "[]")  # a margin chart draws no series whose tag has one


def stage_group(stage: str) -> str:
    """The Scalars-page group of ``stage``'s own charts, numbered in pipeline order (``2 metatrain``)."""
    number = 2 if "/" in stage else STAGE_NUMBER.get(stage, 3)  # a row under ablation/ or compare/ trains
    return f"{number} {stage}"


def tag(stage: str, name: str, section: str | None = None) -> str:
    """The tag of ``name`` logged by ``stage``: in the stage's group, or in ``section``'s group (one of
    :data:`SECTIONS`) with the stage in front of the name (``4 learning rate/metatrain theta``)."""
    name = name.translate(_NO_PARENTHESES)
    if section is None:
        return f"{stage_group(stage)}/{name}"
    return f"{SECTION_NUMBER[section]} {section}/{' '.join(filter(None, (stage, name)))}"


def accuracy_tags(stage: str, name: str) -> tuple[str, str, str]:
    """The tags of accuracy ``name`` and of its CI band's lower and upper bound."""
    return tag(stage, name), tag(stage, f"{name} low", BANDS), tag(stage, f"{name} high", BANDS)


def breakdown_name(method: str, breakdown: str) -> str:
    """The accuracy name of a method's per-episode breakdown ``breakdown`` (``by_presentation``), a
    curve over its columns: ``"MANN: accuracy by presentation"``."""
    return f"{method}: accuracy {breakdown.replace('_', ' ')}"


def episode_counts(episodes: int, points: int = 20) -> list[int]:
    """Up to ``points`` evenly spaced episode counts ending at ``episodes``, from 2 on where there are
    two: the x axis of a test accuracy estimated on more and more of the episodes."""
    return sorted({max(min(2, episodes), -(-k * episodes // points)) for k in range(1, points + 1)})
