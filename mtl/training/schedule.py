"""Step learning-rate schedules, as the official codes step them.

Both official MTL trainers call ``StepLR.step()`` at the *start* of every epoch, so the rate of epoch
``e`` (counted from 1) is ``gamma ** (e // step_size)``: the first decay comes after ``step_size - 1``
epochs, not ``step_size``. The official TF meta-trainer halves its rate after an update whose index is
a multiple of 1,000 (counted from 0, the first excepted), so the first decay comes after 1,001 updates.
Both are one rule: the rate drops after ``first`` steps and then every ``every`` steps, times
``gamma`` each time, never below ``floor`` × the starting rate.

Meta-training schedules per meta-update (the TF drops fall inside an epoch), pretraining per epoch.
The factors are functions of the step count alone, so a resumed run continues at the same rate.
"""

from __future__ import annotations

from mtl.config import MetaConfig, PretrainConfig

__all__ = ["drops", "meta_factor", "meta_first_drop", "pretrain_factor", "pretrain_first_drop", "step_factor"]


def step_factor(done: int, first: int, every: int, gamma: float, floor: float = 0.0) -> float:
    """The rate's factor for the step that follows ``done`` steps: ``gamma`` once ``first`` steps are
    done and again every ``every`` steps after that, never below ``floor``."""
    decays = 0 if done < first else 1 + (done - first) // every
    return max(gamma**decays, floor)


def drops(factor, total: int) -> list[int]:
    """The step counts ``n < total`` after which ``factor`` (of the steps done) changes."""
    return [n for n in range(1, total) if factor(n) != factor(n - 1)]


def meta_first_drop(m: MetaConfig) -> int:
    """Meta-updates before the first decay (``meta.first_drop``, by default ``step_size - 1`` epochs:
    the official PyTorch code's StepLR stepped at the start of every epoch)."""
    if m.first_drop is not None:
        return m.first_drop
    return (m.step_size - 1) * m.updates_per_epoch


def meta_factor(m: MetaConfig, updates: int) -> float:
    """The meta-LRs' factor for the meta-update that follows ``updates`` updates."""
    every = m.step_size * m.updates_per_epoch
    return step_factor(updates, meta_first_drop(m), every, m.gamma, m.lr_floor)


def pretrain_first_drop(p: PretrainConfig) -> int:
    """Epochs before pretraining's first decay (``pretrain.first_drop``, by default ``step_size - 1``,
    as the official code: ×0.2 from the 30th epoch with ``step_size: 30``)."""
    return p.first_drop if p.first_drop is not None else p.step_size - 1


def pretrain_factor(p: PretrainConfig, epochs: int) -> float:
    """The step schedule's factor for the epoch that follows ``epochs`` epochs."""
    return step_factor(epochs, pretrain_first_drop(p), p.step_size, p.gamma)
