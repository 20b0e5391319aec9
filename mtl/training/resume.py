"""What lets a training stage stop at any step and continue bit for bit: RNG states, the resume
checkpoint and its config check, and a graceful stop on SIGTERM / SIGINT.

A stage's ``last.pt`` holds, besides its weights, a ``"resume"`` dict: the position (epoch, step in
the epoch), the optimiser and scheduler states, every random state the run draws from, the
running sums of the epoch, and the best metric so far. Loading it restores all of that.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl.config import upgrade
from mtl.errors import MtlError
from mtl.runtime import checkpoint
from mtl.runtime.distributed import World
from mtl.training.keys import NOT_TRAINING


class Stopped(Exception):
    """A run stopped on a signal after writing its checkpoint; the CLI exits with 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @classmethod
    def at(cls, stage: str, epoch: int, step: int, out: Path, signum: int) -> Stopped:
        """After ``step`` steps of epoch ``epoch`` (0-based), with ``out/last.pt`` written."""
        return cls(
            f"{stage}: stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step}; "
            f"{out / 'last.pt'} is written and the same command resumes from there",
            signum,
        )


def rng_state(generators: dict[str, Any]) -> dict[str, Any]:
    """The global Python / numpy / torch random states and those of ``generators`` (torch Generators,
    numpy Generators, or objects with ``state_dict``) as tensors and builtins (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": (has_gauss, gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    for name, gen in generators.items():
        if isinstance(gen, torch.Generator):
            state[name] = gen.get_state()
        elif isinstance(gen, np.random.Generator):
            state[name] = gen.bit_generator.state
        else:
            state[name] = gen.state_dict()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded."""
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        if isinstance(gen, torch.Generator):
            gen.set_state(state[name])
        elif isinstance(gen, np.random.Generator):
            gen.bit_generator.state = state[name]
        else:
            gen.load_state_dict(state[name])


def _tuples(x: Any) -> Any:
    # random.setstate needs tuples; a checkpoint round trip may hand back lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def load_resume(
    out: Path, stage: str, config: dict, *, fresh: bool, note, matters: Callable[[str], bool] | None = None
) -> tuple[dict, Path] | None:
    """The checkpoint to continue from and its path (``last.pt``, or ``last.prev.pt`` when ``last.pt``
    is unreadable), or None to start over.

    ``fresh`` ignores them. Falling back to ``last.prev.pt`` is said through ``note``. When one of them
    is there but none can be read, this is an error that changes nothing: starting over would, after
    one epoch, put a barely trained model in the place of the run's ``best.pt``; ``--fresh`` is how the
    user says so. A run that starts over says (``note``) that it keeps the ``best.pt`` it finds as
    ``best.prev.pt`` (:meth:`~mtl.training.run.Run.save` does that). A checkpoint whose resolved config
    differs in a key that ``matters`` (default: any key but :data:`~mtl.training.keys.NOT_TRAINING`) is
    an error naming the keys.
    """
    ckpt, path, unusable = None, out / "last.pt", []
    for name in () if fresh else ("last.pt", "last.prev.pt"):
        path = out / name
        if not path.is_file():
            continue
        try:
            ckpt = checkpoint.load(path, stage=stage)
            break
        except MtlError as exc:
            unusable.append(exc)
    if ckpt is None:
        if unusable:
            raise MtlError(_nothing_to_resume(out, stage, unusable))
        if (best := describe_best(out, stage)) is not None:
            how = "--fresh" if fresh else f"no last.pt in {out}"
            older = " (replacing the best.prev.pt there)" if (out / "best.prev.pt").exists() else ""
            note(
                f"{how}: training from the start; {best} is kept as best.prev.pt{older} once this run "
                "writes its own"
            )
        return None
    if unusable:  # last.pt is unreadable and last.prev.pt is fine: continue from there
        note(f"{unusable[0]}; trying the checkpoint before it")
    if not isinstance(ckpt.get("resume"), dict):
        raise MtlError(f"{path} has no resume state (older mtl); run with --fresh to start over")
    matters = matters or (lambda key: not key.startswith(NOT_TRAINING))
    saved = upgrade(ckpt["config"])  # an earlier version's keys read as today's
    diff = [k for k in config_diff(saved, config) if matters(k)]
    if diff:
        raise MtlError(
            f"{path} belongs to another configuration (differs in {', '.join(diff)}); "
            "run with --fresh to start over, or restore those settings to resume"
        )
    return ckpt, path


def describe_best(out: Path, stage: str) -> str | None:
    """``"best.pt (epoch 7, val 61.20 ± 0.45%)"`` for the ``best.pt`` in ``out``, ``"best.pt"`` if it
    cannot be read, None if there is none."""
    path = out / "best.pt"
    if not path.is_file():
        return None
    try:
        m = checkpoint.load(path, stage=stage)["metric"]
        return f"best.pt (epoch {m['epoch']:d}, val {m['val_acc']:.2f} ± {m['val_ci95']:.2f}%)"
    except (MtlError, KeyError, TypeError, ValueError):
        return "best.pt"


def _nothing_to_resume(out: Path, stage: str, unusable: list[MtlError]) -> str:
    """The refusal when ``last.pt`` / ``last.prev.pt`` are there but none of them can be read (their
    ``unusable`` errors): what is wrong, that nothing changed, and what ``--fresh`` does to ``best.pt``."""
    missing = [name for name in ("last.pt", "last.prev.pt") if not (out / name).is_file()]
    why = "; ".join(str(exc) for exc in unusable)
    why += f", and there is no {missing[0]} to resume from" if missing else ""
    best = describe_best(out, stage)
    kept = f"nothing was changed, {best} is kept" if best else "nothing was changed"
    then = " (best.pt is then kept as best.prev.pt)" if best else ""
    return f"cannot resume {stage}: {why}; {kept}; run with --fresh to start over{then}"


def settle_best(run: Any, resumed_from: Path, best: dict) -> None:
    """Tell ``run`` whether the ``best.pt`` in its folder is this training's own (so a better model simply
    replaces it) or an earlier training's (kept as ``best.prev.pt`` when replaced), for a run resumed
    from ``resumed_from`` whose kept metric is ``best``. It is its own when the training had kept one
    (``val_acc`` is -1 until then), or when it was written after ``resumed_from``: the run stopped
    between writing ``best.pt`` and its ``last.pt``."""
    own = best.get("val_acc", -1) >= 0
    with suppress(OSError):  # no best.pt: nothing to keep
        own = own or (run.out / "best.pt").stat().st_mtime_ns >= resumed_from.stat().st_mtime_ns
    run.own_best = own


def training_state(
    opt: torch.optim.Optimizer, sched: Any, generators: dict[str, Any], **position: Any
) -> dict:
    """The ``"resume"`` entry of a ``last.pt``: ``position`` (epoch, step, running sums, best metric,
    ...) plus the optimiser and scheduler states and every random state."""
    return {
        **position,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(generators),
    }


def restore_training(
    r: dict, opt: torch.optim.Optimizer, sched: Any, generators: dict[str, Any], *, run: Any, epochs: int,
    steps_per_epoch: int, path: Path,
) -> None:  # fmt: skip
    """Load what :func:`training_state` saved (from ``path``); continue TensorBoard at that step and
    say where."""
    opt.load_state_dict(r["optimizer"])
    sched.load_state_dict(r["scheduler"])
    set_rng_state(r["rng"], generators)
    epoch, step = r["epoch"], r["step"]
    settle_best(run, path, r["best"])
    run.monitor.resume_at(epoch * steps_per_epoch + step)
    if epoch >= epochs:
        run.monitor.line(
            f"already finished in {run.out} (kept epoch {r['best']['epoch']}); --fresh trains again"
        )
    else:
        run.monitor.line(f"resuming from {path} at epoch {epoch + 1}, step {step}")


def agreed_signal(stop: dict[str, int], world: World, device: torch.device) -> int:
    """The stop signal if any rank received one (a collective: every rank must call it), else 0."""
    if not world.active:
        return stop["signum"]
    anyone = world.sum(torch.tensor([float(stop["signum"])], device=device))
    return stop["signum"] or (signal.SIGTERM if float(anyone) > 0 else 0)


@contextmanager
def graceful_stop() -> Iterator[dict[str, int]]:
    """While active, SIGTERM and SIGINT only set ``flag["signum"]``: the loop finishes its step, writes a
    checkpoint and raises :class:`Stopped`. A second signal stops at once, as usual."""
    flag = {"signum": 0}
    previous = {}

    def handler(signum, frame):
        if flag["signum"]:
            signal.signal(signum, previous[signum])
            raise KeyboardInterrupt
        flag["signum"] = signum

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers, plain behaviour
        previous.clear()
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class FiniteWatch:
    """Remembers, on the device, the first step whose loss was NaN or inf: no host sync per step.
    :meth:`check` (one sync) runs before every checkpoint, so a non-finite run never overwrites one."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), step, self.first)

    def check(self, stage: str, steps_per_epoch: int, out: Path, world: World | None = None) -> None:
        bad = self.first >= 0
        if world is not None and world.active:  # every rank stops together
            bad = world.sum(bad.float()) > 0
        if bool(bad):
            at = max(int(self.first), 0)
            raise MtlError(
                f"{stage}: the loss became NaN or inf at step {at + 1} (epoch {at // steps_per_epoch + 1}); "
                f"the last good checkpoints in {out} are kept. Lower the learning rate"
            )
