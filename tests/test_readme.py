"""The README's first screen works as typed, its package layout is the one on disk, and its lines are
short enough to read: the Quick start's non-training commands run from any folder and print what the
README shows beneath them; the layout's tree lists exactly the packages under mtl/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Lines of the Quick start that set up or train: everything else runs in the test.
SETUP = re.compile(r"^make\s+setup\b")
ACTIVATE = re.compile(r"^(\.|source)\s+\.venv/bin/activate\b")
TRAINS = re.compile(
    r"^(make\s+.*\b(pretrain|metatrain|metatest|ablation|compare)\b"
    r"|mtl\s+(pretrain|metatrain|metatest|ablate|compare)\b)"
)
GAP = "..."


def text() -> str:
    return README.read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The body of the ``## heading`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text(), flags=re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def code_block(body: str, language: str = "") -> list[str]:
    """The lines of the first fenced block in ``body`` opened by ```language."""
    match = re.search(rf"^```{language}\n(.*?)^```$", body, flags=re.M | re.S)
    assert match, f"no ```{language} block"
    return match.group(1).splitlines()


def quick_start_commands() -> list[str]:
    return [line.strip() for line in code_block(section("Quick start"), "bash") if line.strip()]


def shown_outputs() -> dict[str, list[str]]:
    """What the README shows the Quick start's commands print: ``$ command`` then its lines."""
    match = re.search(r"<!-- quick-start-output -->\n```\n(.*?)^```$", section("Quick start"), re.M | re.S)
    assert match, "the Quick start shows no output under <!-- quick-start-output -->"
    shown: dict[str, list[str]] = {}
    for line in match.group(1).splitlines():
        if line.startswith("$ "):
            shown[line[2:].strip()] = []
        else:
            assert shown, f"output before any '$ command' line: {line!r}"
            shown[list(shown)[-1]].append(line.rstrip())
    return shown


def _same(shown: str, printed: str) -> bool:
    """A shown line is the printed line, or its start when it ends in ' ...'."""
    if shown.endswith(" " + GAP):
        return printed.startswith(shown[: -len(GAP)].rstrip())
    return printed == shown


def _at(lines: list[str], start: int, segment: list[str]) -> bool:
    return start + len(segment) <= len(lines) and all(
        _same(s, p) for s, p in zip(segment, lines[start : start + len(segment)], strict=True)
    )


def matches(shown: list[str], printed: list[str]) -> bool:
    """``shown`` is ``printed`` with runs of lines cut at '...' lines: its segments appear in order,
    the first at the start and the last at the end unless a '...' line stands before or after them."""
    segments: list[list[str]] = [[]]
    for line in shown:
        if line == GAP:
            segments.append([])
        else:
            segments[-1].append(line)
    open_start, open_end = not segments[0], not segments[-1]
    segments = [s for s in segments if s]
    if not segments:
        return True
    position = 0
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if i == 0 and not open_start:
            if not _at(printed, 0, segment):
                return False
            position = len(segment)
            if last and not open_end:
                return position == len(printed)
            continue
        if last and not open_end:
            start = len(printed) - len(segment)
            return start >= position and _at(printed, start, segment)
        found = next((s for s in range(position, len(printed)) if _at(printed, s, segment)), None)
        if found is None:
            return False
        position = found + len(segment)
    return True


def test_matches_reads_cuts():
    printed = ["a", "b long line", "c", "d", "e"]
    assert matches(["a", "b long ...", "..."], printed)
    assert matches(["...", "c", "d", "..."], printed)
    assert matches(["a", "...", "d", "e"], printed)
    assert not matches(["a", "c", "..."], printed)  # not consecutive without a cut
    assert not matches(["a", "..."], ["b", "a"])  # not at the start
    assert not matches(["...", "d"], printed)  # not at the end
    assert not matches(["a", "...", "e", "d"], printed)  # out of order


def test_quick_start_works_as_typed(tmp_path):
    commands = quick_start_commands()
    setup = [i for i, c in enumerate(commands) if SETUP.match(c)]
    activate = [i for i, c in enumerate(commands) if ACTIVATE.match(c)]
    first_mtl = next((i for i, c in enumerate(commands) if re.match(r"^mtl\b", c)), None)
    assert setup and activate and first_mtl is not None, commands
    assert setup[0] < activate[0] < first_mtl, "make setup, then the activation line, then mtl"

    runs = [c for c in commands if not (SETUP.match(c) or ACTIVATE.match(c) or TRAINS.match(c))]
    assert any(c.startswith("mtl ") for c in runs), commands
    shown = shown_outputs()
    ran = [re.sub(r"\s+#.*$", "", c) for c in runs]
    assert sorted(shown) == sorted(ran), "the README shows the output of exactly the commands that run"

    folder = tmp_path / "anywhere"
    folder.mkdir()
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # the mtl next to this README, whichever checkout the console script was installed from
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["HOME"] = str(tmp_path / "home")
    for command, line in zip(ran, runs, strict=True):
        result = subprocess.run(
            ["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
        printed = [p.rstrip() for p in result.stdout.splitlines()]
        assert matches(shown[command], printed), f"{command} printed:\n{result.stdout}"


def layout_packages() -> list[str]:
    """The packages the Package layout's tree names: ``data`` at depth 1, ``data/glyphs`` at depth 2."""
    lines = code_block(section("Package layout"))
    assert lines[0] == "mtl/", lines[0]
    packages, parent = [], None
    for line in lines[1:]:
        match = re.match(r"^( +)([a-z_]+)/(\s|$)", line)
        if not match:
            assert line.startswith(" " * 6), f"neither a package nor a continuation: {line!r}"
            continue
        indent, name = len(match.group(1)), match.group(2)
        assert indent in (2, 4), f"a tree line indented {indent}: {line!r}"
        if indent == 2:
            parent = name
            packages.append(name)
        else:
            assert parent, line
            packages.append(f"{parent}/{name}")
    return packages


def test_package_layout_is_the_packages_on_disk():
    source = ROOT / "mtl"
    on_disk = sorted(
        p.parent.relative_to(source).as_posix()
        for pattern in ("*/__init__.py", "*/*/__init__.py")
        for p in source.glob(pattern)
    )
    listed = layout_packages()
    assert len(listed) == len(set(listed)), listed
    missing, extra = sorted(set(on_disk) - set(listed)), sorted(set(listed) - set(on_disk))
    assert not missing and not extra, f"not in the README's tree: {missing}; not on disk: {extra}"


def prose_lines() -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks and tables."""
    lines, fenced = [], False
    for number, line in enumerate(text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced and not line.startswith("|"):
            lines.append((number, line))
    return lines


def test_prose_lines_are_short():
    long = [f"{n}: {len(line)}" for n, line in prose_lines() if len(line) > 110]
    assert not long, f"README prose lines over 110 characters: {long}"
    contents = section("Contents").strip().splitlines()
    assert contents and all(line.startswith(("- ", "  ")) for line in contents), contents
    wide = [line for line in contents if len(line) > 100]
    assert not wide, f"contents lines over 100 characters: {wide}"


def test_first_screen_says_what_mtl_is_then_the_quick_start():
    lines = text().splitlines()
    assert lines[0].startswith("# mtl")
    start = lines.index("## Quick start")
    intro = [line for line in lines[1:start] if line.strip()]
    assert 1 <= len(intro) <= 3, intro
    assert not any("=" in line for line in intro), "no formula on the first screen"
