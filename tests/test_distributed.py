"""torchrun with 2 gloo processes on the CPU follows the single-process run (same global batch, seed)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, wait_for_mid_epoch_checkpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtl.models.backbone import build_backbone
from mtl.models.norm import has_fixed_scale
from mtl.runtime import checkpoint, distributed
from mtl.runtime.distributed import DistBatchNorm2d, World, sync_batch_norm
from mtl.runtime.run_lock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
# fp32 so that the comparison is about the distribution, not bf16 rounding; HT on, 3 tasks over 2 ranks.
SETS = [*TINY, "precision=fp32", "meta.hard_tasks.enabled=true", "checkpoint_every=3"]


def launch(stage: str, sets: list[str], ckpts: Path, processes: int) -> None:
    done = subprocess.run(
        _command(stage, sets, ckpts, processes),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _command(stage: str, sets: list[str], ckpts: Path, processes: int) -> list[str]:
    args = [a for o in sets for a in ("--set", o)]
    cli = ["-m", "mtl", stage, "pipelines/glyphs-1shot.yaml", *args, "--checkpoints", str(ckpts)]
    if processes > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            *cli,
        ]
    else:
        cmd = [sys.executable, *cli]
    return cmd


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def curve(ckpts: Path, stage: str, tag: str) -> list[float]:
    acc = EventAccumulator(str(ckpts / "tiny" / "tb" / stage))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    sets = [*SETS, f"data.root={tmp / 'data'}"]
    one, two, two_pretrained = tmp / "p1", tmp / "p2", tmp / "p2-pretrain"
    for stage in ("pretrain", "metatrain"):
        launch(stage, sets, one, 1)
    launch("pretrain", sets, two_pretrained, 2)
    # Both metatrain runs start from the same pretrained encoder, so they compare metatrain alone.
    shutil.copytree(one / "tiny" / "pretrain", two / "tiny" / "pretrain")
    launch("metatrain", sets, two, 2)
    return one, two, two_pretrained


def test_sigterm_to_a_two_process_metatrain_then_resume_is_bit_identical(runs, tmp_path):
    """As a cluster scheduler does: SIGTERM to torchrun and its workers, mid-epoch; then the same command."""
    _, two, _ = runs
    sets = [*SETS, f"data.root={two.parent / 'data'}", "meta.epochs=30", "checkpoint_every=1"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for ckpts in (straight, stopped):
        shutil.copytree(two / "tiny" / "pretrain", ckpts / "tiny" / "pretrain")
    launch("metatrain", sets, straight, 2)

    proc = subprocess.Popen(
        _command("metatrain", sets, stopped, 2), cwd=ROOT, env=_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_mid_epoch_checkpoint(proc, stopped / "tiny" / "metatrain" / "last.pt")
    os.killpg(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    assert output.count("metatrain: stopped by SIGTERM at epoch") == 1, output[-3000:]  # rank 0 only

    launch("metatrain", sets, stopped, 2)
    for name in ("best.pt", "last.pt"):
        a = checkpoint.load(straight / "tiny" / "metatrain" / name, stage="metatrain")
        b = checkpoint.load(stopped / "tiny" / "metatrain" / name, stage="metatrain")
        assert a["metric"] == b["metric"]
        for part in ("encoder", "theta"):
            assert a[part].keys() == b[part].keys()
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (name, part)


@pytest.mark.parametrize(
    ("stage", "tag"), [("pretrain", "1 pretrain/loss"), ("metatrain", "2 metatrain/loss")]
)
def test_two_gloo_processes_follow_the_single_process_loss_curve(runs, stage, tag):
    one, two, two_pretrained = runs
    two = two_pretrained if stage == "pretrain" else two
    single, double = curve(one, stage, tag), curve(two, stage, tag)
    assert len(single) == len(double) >= 2
    # The first epoch's steps agree to rounding. Two ranks sum the gradient in another order and batch
    # norm adds their sums, so later steps drift by more where a rounding flips a max-pool choice
    # (3e-4 of the loss by pretrain's second epoch on an AMD EPYC, under 1e-4 on an Intel Xeon); a
    # wrong split of the batch or of the gradient is off by far more from the first epoch on.
    assert double[0] == pytest.approx(single[0], rel=1e-5)
    assert double == pytest.approx(single, rel=2e-3, abs=1e-4)
    a = checkpoint.load(one / "tiny" / stage / "last.pt", stage=stage)["encoder"]
    b = checkpoint.load(two / "tiny" / stage / "last.pt", stage=stage)["encoder"]
    assert a.keys() == b.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    wa, wb = (torch.cat([w[k].double().flatten() for k in floats]) for w in (a, b))
    assert (wb - wa).norm() < 1e-2 * wa.norm()
    assert all(torch.equal(a[k], b[k]) for k in a if k not in floats)


def test_hard_task_pool_is_the_single_process_pool(runs):
    one, two, _ = runs
    p1 = checkpoint.load(one / "tiny" / "metatrain" / "last.pt", stage="metatrain")["hard_tasks"]
    p2 = checkpoint.load(two / "tiny" / "metatrain" / "last.pt", stage="metatrain")["hard_tasks"]
    # Entries: [class, accuracy, meta-batch, images it failed on].
    assert [e[:3] for e in p1["entries"]] == [e[:3] for e in p2["entries"]]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(p1["entries"], p2["entries"], strict=True))
    for key in ("failures", "chosen"):
        assert torch.equal(p1[key], p2[key]), key
    assert p1["updates"] == p2["updates"] > 0 and p1["rng"] == p2["rng"]


def test_only_rank_0_writes(runs):
    _, two, two_pretrained = runs
    for ckpts, stage in ((two_pretrained, "pretrain"), (two, "metatrain")):
        events = list((ckpts / "tiny" / "tb" / stage).iterdir())
        assert len(events) == 1, stage  # one event file: rank 1 logged nothing


def test_the_ranks_are_one_run_to_the_run_folder_lock(runs, tmp_path):
    """Rank 0 takes the folder's lock for all ranks (the runs above held it, and let it go); a folder
    another process holds stops every rank at once, with rank 0's line naming that process."""
    from test_run_lock import held

    _, two, two_pretrained = runs
    assert not list(two.rglob(LOCK_NAME)) and not list(two_pretrained.rglob(LOCK_NAME))
    ckpts = tmp_path / "held"
    shutil.copytree(two / "tiny" / "pretrain", ckpts / "tiny" / "pretrain")
    out = ckpts / "tiny" / "metatrain"
    out.mkdir()
    sets = [*SETS, f"data.root={two.parent / 'data'}"]
    with held(out) as holder:
        done = subprocess.run(
            _command("metatrain", sets, ckpts, 2), cwd=ROOT, capture_output=True, text=True, timeout=300,
            env=_env(),
        )  # fmt: skip
    assert done.returncode != 0
    assert f"{out} is in use by another mtl run (process {holder.pid})" in done.stderr, done.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # neither rank wrote anything


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(
    stage: str, sets: list[str], ckpts: list[Path], own: tuple[list[str], list[str]] = ([], [])
) -> list[subprocess.Popen]:
    """``stage`` as two nodes of one process each, as on a cluster: one torchrun per node (each in a
    session of its own, as on its own machine), meeting at a c10d rendezvous, here on localhost; node
    k runs with ``--checkpoints ckpts[k]`` and the settings ``own[k]`` after ``sets``."""
    port = free_port()
    return [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=mtl-test",
                "-m", "mtl", stage, "pipelines/glyphs-1shot.yaml",
                *(a for o in [*sets, *mine] for a in ("--set", o)), "--checkpoints", str(folder),
            ],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        for folder, mine in zip(ckpts, own, strict=True)
    ]  # fmt: skip


def launch_nodes(
    stage: str, sets: list[str], ckpts: list[Path], own: tuple[list[str], list[str]] = ([], [])
) -> list[subprocess.CompletedProcess]:
    """:func:`start_nodes`, waiting for both to end."""
    procs = start_nodes(stage, sets, ckpts, own)
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def nodes(runs, tmp_path_factory):
    """Pretrain, then metatrain, as 2 nodes x 1 process into one checkpoints folder, on a dataset
    cache that neither node has yet (both reach it at once)."""
    tmp = tmp_path_factory.mktemp("nodes")
    ckpts, sets = tmp / "ckpts", [*SETS, f"data.root={tmp / 'data'}"]
    logs = {}
    for stage in ("pretrain", "metatrain"):
        logs[stage] = launch_nodes(stage, sets, [ckpts, ckpts])
        assert all(d.returncode == 0 for d in logs[stage]), [d.stderr[-3000:] for d in logs[stage]]
    return runs[0], ckpts, logs, tmp


@pytest.mark.parametrize("stage", ["pretrain", "metatrain"])
def test_two_nodes_of_one_process_train_what_one_process_trains(nodes, stage):
    one, two, _, _ = nodes
    tag = {"pretrain": "1 pretrain/loss", "metatrain": "2 metatrain/loss"}[stage]
    single, double = curve(one, stage, tag), curve(two, stage, tag)
    assert len(single) == len(double) >= 2
    assert double == pytest.approx(single, rel=2e-3, abs=1e-4)
    a, b = (checkpoint.load(c / "tiny" / stage / "last.pt", stage=stage) for c in (one, two))
    assert b["metric"]["epoch"] == a["metric"]["epoch"]
    assert b["metric"]["val_acc"] == pytest.approx(a["metric"]["val_acc"], abs=0.5)
    parts = ("encoder",) if stage == "pretrain" else ("encoder", "theta")
    for part in parts:
        assert a[part].keys() == b[part].keys()
        floats = [k for k in a[part] if a[part][k].is_floating_point()]
        wa, wb = (torch.cat([w[part][k].double().flatten() for k in floats]) for w in (a, b))
        assert (wb - wa).norm() < 1e-2 * wa.norm(), part
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part] if k not in floats), part


def test_of_two_nodes_rank_0_alone_writes_and_reports(nodes):
    _, two, logs, _ = nodes
    for stage in ("pretrain", "metatrain"):
        assert len(list((two / "tiny" / "tb" / stage).iterdir())) == 1, stage  # one event file
        said = "".join(d.stdout for d in logs[stage])
        assert said.count(f"{stage}: wrote {two / 'tiny' / stage / 'best.pt'}") == 1, said
        assert said.count(f"[{stage}] epoch 1/") == 1, said  # the other node prints nothing
    assert not list(two.rglob(LOCK_NAME))  # one lock, rank 0's, released at the end


def test_two_nodes_share_one_dataset_cache_made_once(nodes):
    _, _, _, tmp = nodes
    made = sorted(p.name for p in (tmp / "data").iterdir())
    assert len(made) == 1 and made[0].startswith("glyphs-"), made  # no lock or temporary folder left


def test_a_node_that_does_not_see_the_checkpoints_folder_stops_the_run(nodes, tmp_path):
    """Each node names its own --checkpoints, as a node-local path would: the node that does not hold
    the lock cannot see rank 0's lock file, and both nodes stop at once, nothing written."""
    _, _, _, tmp = nodes
    mine, other = tmp_path / "a", tmp_path / "b"
    done = launch_nodes("pretrain", [*SETS, f"data.root={tmp / 'data'}"], [mine, other])
    assert all(d.returncode != 0 for d in done)
    said = "".join(d.stderr for d in done)
    lock = re.escape(f"/tiny/pretrain/{LOCK_NAME}")
    pattern = (
        rf"error: rank 1 \({re.escape(socket.gethostname())}\): does not see \S+{lock}, which rank 0 holds: "
        r"every node must read and write one checkpoints folder "
        r"\(--checkpoints on a filesystem all nodes share\)"
    )
    assert len(re.findall(pattern, said)) == 2, said[-3000:]  # the same line from both nodes
    # The workers exit 2 with that line alone; the traceback under it is torchrun's failure report.
    assert f'File "{ROOT / "mtl"}' not in said and said.count("exitcode  : 2") == 2, said[-3000:]
    assert not mine.exists() and not other.exists()


def test_a_node_that_cannot_read_its_data_stops_every_node_with_its_line(nodes, tmp_path):
    """Each node reads its own copy of the data (a node-local data.root): one that cannot stops the
    run on both nodes, in its own words, instead of leaving the other waiting for it."""
    _, _, _, tmp = nodes
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the data would go")
    ckpts = tmp_path / "ckpts"
    own = ([f"data.root={tmp / 'data'}"], [f"data.root={blocked}"])
    done = launch_nodes("pretrain", SETS, [ckpts, ckpts], own)
    assert all(d.returncode != 0 for d in done)
    said = "".join(d.stderr for d in done)
    line = rf"error: (rank 1 \({re.escape(socket.gethostname())}\): )?cannot write the glyphs dataset cache: "
    assert len(re.findall(line + re.escape(str(blocked)), said)) == 2, said[-3000:]  # on both nodes
    assert f'File "{ROOT / "mtl"}' not in said and said.count("exitcode  : 2") == 2, said[-3000:]
    assert not list(ckpts.rglob("*.pt")) and not list(ckpts.rglob(LOCK_NAME))


def lose_node(node: subprocess.Popen) -> None:
    """SIGKILL to a node's torchrun and to its workers, which torchrun starts in sessions of their own."""
    children = Path(f"/proc/{node.pid}/task/{node.pid}/children").read_text().split()
    for pid in (*map(int, children), node.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    node.communicate(timeout=60)


def test_a_node_lost_mid_run_then_the_same_launch_resumes_bit_identical(nodes, tmp_path):
    """A node dies (SIGKILL to its torchrun and worker, as a machine that fails): the other stops with
    an error instead of waiting, and the same two-node launch, run again, resumes from ``last.pt`` and
    ends where an uninterrupted run ends."""
    one, two, _, tmp = nodes
    sets = [*SETS, f"data.root={tmp / 'data'}", "meta.epochs=30", "checkpoint_every=1"]
    straight, lost = tmp_path / "straight", tmp_path / "lost"
    for ckpts in (straight, lost):
        shutil.copytree(two / "tiny" / "pretrain", ckpts / "tiny" / "pretrain")
    assert all(d.returncode == 0 for d in launch_nodes("metatrain", sets, [straight, straight]))

    survivor, failing = start_nodes("metatrain", sets, [lost, lost])
    wait_for_mid_epoch_checkpoint(survivor, lost / "tiny" / "metatrain" / "last.pt")
    lose_node(failing)
    survivor.communicate(timeout=120)  # it stops within seconds: its peer is gone
    assert survivor.returncode != 0
    resumed = launch_nodes("metatrain", sets, [lost, lost])
    assert all(d.returncode == 0 for d in resumed), [d.stderr[-3000:] for d in resumed]
    for name in ("best.pt", "last.pt"):
        a = checkpoint.load(straight / "tiny" / "metatrain" / name, stage="metatrain")
        b = checkpoint.load(lost / "tiny" / "metatrain" / name, stage="metatrain")
        assert a["metric"] == b["metric"]
        for part in ("encoder", "theta"):
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (name, part)
    assert not list(lost.rglob(LOCK_NAME))


@pytest.mark.parametrize(("n", "size"), [(3, 2), (4, 2), (5, 3), (2, 2)])
def test_world_slices_cover_every_item_once(n, size):
    parts = [World(r, size).slice(n) for r in range(size)]
    assert [i for s in parts for i in range(s.start, s.stop)] == list(range(n))
    assert max(s.stop - s.start for s in parts) - min(s.stop - s.start for s in parts) <= 1


def _bn_parameter_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".bn" in n]


@pytest.mark.parametrize(("device", "kind"), [("cpu", DistBatchNorm2d), ("cuda", torch.nn.SyncBatchNorm)])
def test_sync_batch_norm_keeps_a_gamma_free_batch_norm_gamma_free(monkeypatch, device, kind):
    """The conversion alone, as two ranks would make it; without a process group the converted norms
    compute what the single-process ones do (CUDA's SyncBatchNorm is only built here, on the CPU)."""
    monkeypatch.setattr(distributed, "_WORLD", World(0, 2))
    torch.manual_seed(0)
    plain = build_backbone("resnet12_tf", widths=(8, 8, 16, 16))
    plain.train()
    with torch.no_grad():
        plain(torch.randn(8, 3, 16, 16))
    names, state = _bn_parameter_names(plain), plain.state_dict()
    model = sync_batch_norm(build_backbone("resnet12_tf", widths=(8, 8, 16, 16)), torch.device(device))
    model.load_state_dict(state)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 12 and all(type(m) is kind and has_fixed_scale(m) for m in bns)
    assert _bn_parameter_names(model) == names and all(n.endswith(".bias") for n in names)  # β only
    assert list(model.state_dict()) == list(state)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for training in (False, True):
            model.train(training), plain.train(training)
            torch.testing.assert_close(model(x), plain(x))
    torch.testing.assert_close(
        model.state_dict()["layer1.bn1.running_mean"], state["layer1.bn1.running_mean"]
    )

    # Other networks convert as before: γ stays a parameter.
    r12 = sync_batch_norm(build_backbone("resnet12", widths=(8, 8, 16, 16)), torch.device(device))
    bns = [m for m in r12.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 16 and all(type(m) is kind and isinstance(m.weight, torch.nn.Parameter) for m in bns)
