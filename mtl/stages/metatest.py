"""Stage 3: accuracy ± 95% CI of the meta-trained method on fixed, seeded test episodes.

The pipeline's method (``method:``, its metatrain ``best.pt``) and the evaluation-only baselines of
``test.baselines`` (θ fine-tuned on pretrained features, nearest centroid on pretrained features and on
raw pixels) are scored on the same episodes, each from features computed once per encoder. A method
that gives per-episode breakdowns beside its accuracy (:meth:`mtl.methods.Method.evaluate_breakdowns`,
e.g. MANN's accuracy by presentation) has them summarised in ``results.json``, printed under the table,
logged to TensorBoard and drawn by ``mtl report --plot``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from mtl import methods
from mtl.config import Config
from mtl.data.episodes import ImageRows
from mtl.data.prepare.manifest import source_format
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.methods import FeatureMethod, Method
from mtl.results import paired
from mtl.results.published import published_breakdowns
from mtl.results.report import (
    refuse_chance_results,
    results_table,
    summarize_breakdowns,
)
from mtl.runtime.checkpoint import MissingCheckpoint
from mtl.runtime.stage_folders import RESULTS_FILE
from mtl.runtime.tb_layout import breakdown_name, episode_counts
from mtl.training.run import Run

MTL = methods.get("mtl").label
FT = methods.get("ft").label
NC_FEATURES = methods.get("nc").label
NC_PIXELS = methods.get("pixels").label


def test_episodes(run: Run, episodes: int) -> tuple[ImageRows, torch.Tensor]:
    """``episodes`` fixed test episodes ``(E, way, shot + query)`` on the device, indexing the test
    images they use (returned too).

    The episodes depend only on the test split and ``test.seed``: every method and run sees the same tasks.
    """
    test = load_splits(run.cfg.data, ("test",))["test"]
    return run.eval_episodes(test, "test", episodes, shot=run.cfg.meta.shot, seed=run.cfg.test.seed)


class Scorer:
    """Scores methods on one set of fixed episodes, encoding each distinct encoder's images once."""

    def __init__(self, run: Run, images: ImageRows, episodes: torch.Tensor) -> None:
        self.run, self.images, self.episodes = run, images, episodes
        # {row label: {breakdown: (E, K)}} of the scored methods that give breakdowns
        self.breakdowns: dict[str, dict[str, torch.Tensor]] = {}
        self._pretrained: dict[str, dict] = {}  # {pretrain run folder: its best.pt}
        self._features: dict[str, torch.Tensor] = {}  # {shared encoder's name: its features}

    def pretrained(self, cfg: Config | None = None) -> dict:
        """The pretrain ``best.pt`` of ``cfg`` (default: the pipeline's), loaded once per run folder:
        a row of ``--seeds-from pretrain`` has a pretraining of its own for each seed."""
        cfg = cfg or self.run.cfg
        name = cfg.run_name("pretrain")
        if name not in self._pretrained:
            self._pretrained[name] = self.run.previous("pretrain", cfg)
        return self._pretrained[name]

    def method(self, cfg: Config, trained: dict | None = None, path: Path | None = None) -> Method:
        """``cfg.method`` in eval mode: from ``trained`` (a metatrain checkpoint, read from ``path``),
        else on the pretrained encoder (or a random one, for a method that starts without it)."""
        encoder = self.run.backbone(cfg=cfg)
        if trained is None and methods.get(cfg.method).needs_pretrained(cfg):
            self.run.load_pretrained(encoder, self.pretrained(cfg), cfg)
        if trained is not None and methods.method_of(trained) != cfg.method:
            raise MtlError(
                f"{path or 'the checkpoint'} is of method '{methods.method_of(trained)}', not '{cfg.method}'"
            )
        source = path or Path("the metatrain checkpoint")
        method = methods.build(cfg, encoder, state=trained, source=source, fits="this pipeline's model")
        return method.to(self.run.device).eval()

    def score(self, method: Method, *, shares: str | None = None, label: str | None = None) -> torch.Tensor:
        """Per-episode accuracy ``(E,)`` of ``method`` (its row: ``label``, default the method's).
        ``shares``: the name of the unchanged encoder its features come from (a pretrain run folder):
        methods naming the same one encode the images once. The method's breakdowns, if it gives any,
        are kept in :attr:`breakdowns`."""
        label = label or method.label
        self.run.monitor.line(f"scoring {label} on {len(self.episodes)} episodes")
        if shares is not None and shares in self._features:
            feats = self._features[shares]
        else:
            feats = method.features(self.images, self.run.features, self.run.device)
            if shares is not None:
                self._features[shares] = feats
        acc, extra = method.evaluate_breakdowns(feats, self.episodes, self.run.cfg.meta.shot)
        if extra:
            self.breakdowns[label] = extra
        return acc

    def baselines(self, names: list[str]) -> dict[str, torch.Tensor]:
        """``{label: accuracy (E,)}`` of evaluation-only methods; those that need the pretrained encoder
        are left out, with a note, when there is none."""
        scores = {}
        for name in names:
            cls = methods.get(name)
            if cls.trains:
                raise MtlError(
                    f"test.baselines: '{name}' is trained by metatrain; list evaluation-only methods"
                )
            cfg = dataclasses.replace(self.run.cfg, method=name)
            needs = cls.needs_pretrained(cfg)
            if needs and not self._has_pretrained():
                self.run.monitor.line(f"no pretrain checkpoint: the '{cls.label}' row is left out")
                continue
            plain = cls.features is FeatureMethod.features  # encodes with its (pretrained) encoder
            shares = cfg.run_name("pretrain") if needs and plain else None
            scores[cls.label] = self.score(self.method(cfg), shares=shares)
        return scores

    def _has_pretrained(self) -> bool:
        try:
            self.pretrained()
        except MissingCheckpoint:  # one that is there but unusable is an error, not a left-out row
            return False
        return True


def publish(
    run: Run,
    scores: dict[str, torch.Tensor],
    episodes: int,
    *,
    quiet: bool,
    extra: dict | None = None,
    reference: str | None = None,
    allow_chance: bool = False,
    breakdowns: dict[str, dict[str, torch.Tensor]] | None = None,
    published: dict[str, dict] | None = None,
    seeds_from: dict[str, str] | None = None,
) -> dict:
    """Turn per-episode accuracies (``(E,)``, or ``(S, E)`` for a row of S training seeds) into
    ``results.json`` (written atomically) and print the table. Every row is compared with
    ``reference`` (default: the first row) on the shared episodes (:mod:`mtl.results.paired`); the
    per-episode results are kept. Results whose every row is exactly chance with zero spread do not
    replace an earlier ``results.json`` unless ``allow_chance`` (:func:`refuse_chance_results`): the
    refusal comes before anything of the run's folder or its TensorBoard stream is written; without an
    earlier file they are written, with a warning on stderr (with ``quiet`` too, as an error would be).
    ``breakdowns`` (``{row: {name: (E, K)}}``, :attr:`Scorer.breakdowns`) of the rows that have them
    are kept as each column's mean and CI, beside ``published`` ones (``{name: {source: {"at",
    "acc"}}}``), printed under the table and logged as curves over the K columns. ``seeds_from``
    (``{row: "pretrain"}``) marks the rows of several seeds whose pretraining each seed repeats."""
    cfg = run.cfg
    accs = {label: acc.detach().cpu().numpy() for label, acc in scores.items()}
    rows = []
    for method, acc in accs.items():
        mean, ci, sd = paired.seed_summary(acc)
        row = {"method": method, "acc": round(mean, 2), "ci95": round(ci, 2)}
        if acc.ndim == 2:  # several training seeds: (S, E)
            per_seed = [round(100 * float(m), 2) for m in acc.mean(1)]
            row.update(seeds=len(acc), seed_sd=round(sd, 2), per_seed=per_seed)
            if (origin := (seeds_from or {}).get(method)) is not None:
                row["seeds_from"] = origin
        rows.append(row)
    results = {
        "pipeline": cfg.name,
        "way": cfg.meta.way,
        "shot": cfg.meta.shot,
        "query": cfg.test.query,
        "episodes": episodes,
        "rows": rows,
        "paper": cfg.paper.__dict__ if cfg.paper.acc is not None else None,
        **summarize_breakdowns(
            {
                row: {name: acc.detach().float().cpu().numpy() for name, acc in kept.items()}
                for row, kept in (breakdowns or {}).items()
                if row in accs
            },
            published,
        ),
        **(extra or {}),
        "differences": paired.differences(accs, reference or next(iter(accs))),
        "per_episode": paired.per_episode_record(accs, cfg.meta.way * cfg.test.query),
    }
    table = results_table(results)
    warning = refuse_chance_results(results, run.out / RESULTS_FILE, allow=allow_chance)
    # results.json first: the TensorBoard stream (which replaces the last run's) follows only a result.
    run.write_text(RESULTS_FILE, paired.dumps(results) + "\n")
    if warning is not None and run.world.main:
        print(warning, file=sys.stderr)
    for method, acc in accs.items():  # each row's estimate on more and more of the episodes
        chart = f"{method}: test accuracy ± 95% CI (%) by episodes scored"
        for n in episode_counts(acc.shape[-1]):
            run.monitor.accuracy(n, method, *paired.seed_summary(acc[..., :n])[:2], chart=chart)
    _log_breakdowns(run, results)
    run.monitor.text("results", table)
    run.monitor.hparams({key: results[key] for key in ("pipeline", "way", "shot", "query", "episodes")}, accs)
    run.monitor.close()
    if not quiet:
        print(table)
    return results


def metatest(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    reference: str | None = None,
    quiet: bool = False,
    allow_chance: bool = False,
) -> dict:
    """Evaluate; writes ``metatest/results.json`` and returns the same dict. Paired differences are
    taken from the row of method ``reference`` (default: the pipeline's method). ``allow_chance``: let
    a table of nothing but chance replace an earlier one (:func:`publish`)."""
    if reference is not None and reference not in (cfg.method, *cfg.test.baselines):
        rows = ", ".join(dict.fromkeys((cfg.method, *cfg.test.baselines)))
        raise MtlError(f"--reference: '{reference}' is not a row of this metatest (rows: {rows})")
    with Run.open(cfg, "metatest", checkpoints, quiet=quiet) as run:
        cls = methods.get(cfg.method)
        trained = run.previous("metatrain") if cls.trains else None
        # Every checkpoint is read and checked before anything is written (results.json comes last).
        scorer = Scorer(run, *test_episodes(run, cfg.test.episodes))
        method = scorer.method(cfg, trained, run.previous_path("metatrain"))
        scores = {cls.label: scorer.score(method)}
        scores.update(scorer.baselines([b for b in cfg.test.baselines if b != cfg.method]))
        results = publish(
            run, scores, cfg.test.episodes, quiet=quiet, reference=_reference(reference, scores),
            allow_chance=allow_chance, breakdowns=scorer.breakdowns,
            published=published_breakdowns(cfg.method, cfg, source_format=source_format(cfg.data.root)),
        )  # fmt: skip
    if not quiet and trained is not None and _kept_epoch(trained) == 0:
        print(
            "note: meta-validation never improved on the untrained start, so the kept metatrain model is "
            "the untrained one (for MTL: the pretrained encoder with identity SS and θ = 0, which equals "
            "the fine-tuned θ row)."
        )
    return results


def _log_breakdowns(run: Run, results: dict) -> None:
    """Each row's breakdowns as TensorBoard curves over their columns (presentation 1, 2, ...); a
    breakdown of one column is no curve and is left to the table."""
    for name, entry in results.get("breakdowns", {}).items():
        for method, row in entry["rows"].items():
            if len(row["mean"]) < 2:
                continue
            chart = breakdown_name(method, name)
            for k, (mean, ci) in enumerate(zip(row["mean"], row["ci95"], strict=True), 1):
                run.monitor.accuracy(k, chart, mean, ci, chart=f"{chart} ± 95% CI (%)")


def _reference(name: str | None, scores: dict[str, torch.Tensor]) -> str | None:
    """The label of method ``name``'s row (None: the first row, the pipeline's method)."""
    if name is None:
        return None
    label = methods.get(name).label
    if label not in scores:
        raise MtlError(f"--reference: '{name}' is not a row of this metatest (rows: {', '.join(scores)})")
    return label


def _kept_epoch(ckpt: dict) -> int | None:
    """The epoch a metatrain checkpoint was kept at (0: the untrained start), if it says."""
    metric = ckpt.get("metric")
    return metric.get("epoch") if isinstance(metric, dict) else None
