"""Progress where jobs run: a log (not a terminal) hears from a long stage at least every minute."""

from __future__ import annotations

import re
import sys

from mtl import config
from mtl.runtime import progress
from mtl.stages import pretrain as pretrain_stage

STEP_SECONDS = 25.0  # what each pretraining step takes on the clock below
HEARTBEAT = re.compile(
    r"^\[pretrain 1/1\] (\d+)/(\d+) \((\d+)%\), [\d.]+/(s|min), ETA \d+ (s|min), loss \d+\.\d{3}$"
)


class Clock:
    """A monotonic clock that moves only when a training step runs."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


class StampedLog:
    """A stdout that is not a terminal and keeps each line with the clock's time when it came."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.lines, self._open = clock, [], ""

    def write(self, text: str) -> int:
        *done, self._open = (self._open + text).split("\n")
        self.lines += [(self.clock.now, line) for line in done]
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_log_hears_from_a_stage_at_least_every_minute(tiny_overrides, tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    step = pretrain_stage.train_step

    def slow_step(*args, **kwargs):
        clock.now += STEP_SECONDS
        return step(*args, **kwargs)

    monkeypatch.setattr(pretrain_stage, "train_step", slow_step)
    log = StampedLog(clock)
    monkeypatch.setattr(sys, "stdout", log)
    cfg = config.load(None, [*tiny_overrides, "pretrain.epochs=1", "pretrain.batch_size=16"])
    pretrain_stage.pretrain(cfg, tmp_path)

    beats = [(t, m) for t, line in log.lines if (m := HEARTBEAT.match(line))]
    steps = int(beats[0][1][2]) if beats else 0
    assert steps * STEP_SECONDS > 120  # the epoch takes minutes on this clock
    assert len(beats) >= steps * STEP_SECONDS / 60 - 1
    done = [int(m[1]) for _, m in beats]
    assert done == sorted(done) and all(0 < d < steps for d in done)
    times = [t for t, _ in log.lines]
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 60
    assert progress.HEARTBEAT_SECONDS <= 30  # with steps shorter than it, no gap reaches 60 s


def test_a_quiet_stage_and_a_terminal_get_no_heartbeat(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)

    def ticking(n: int):
        for i in range(n):
            clock.now += STEP_SECONDS
            yield i

    progress.show_progress(False)
    assert list(progress.progress(ticking(10), length=10, label="quiet")) == list(range(10))
    assert capsys.readouterr().out == ""
    progress.show_progress(True)
    assert list(progress.progress(ticking(10), length=10, label="loud")) == list(range(10))
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("[loud] ") and "ETA" in line for line in lines)
    progress.show_progress(False)
