"""Published accuracies beside which ``mtl compare`` shows its rows (5-way, %, ± 95% CI).

From the papers themselves and the MTL paper's results table (Sun et al. 2019): a row is
keyed by the ``mtl compare`` row name whose method and backbone the paper used, then by (dataset,
shot) for 5-way, (dataset, shot, way) otherwise. Omniglot numbers use the Vinyals et al. split with
rotations, so they are shown only for an Omniglot prepared with ``--split-lists`` (its manifest says
``omniglot-vinyals``).
"""

from __future__ import annotations

from pathlib import Path

from mtl.config import Config
from mtl.data.prepared import load_manifest
from mtl.errors import MtlError

__all__ = ["PUBLISHED", "published"]


def _omniglot(accs: tuple[float, float, float, float], source: str) -> dict[tuple, tuple]:
    """5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 20-way 5-shot (no CIs published)."""
    keys = (("omniglot", 1, 5), ("omniglot", 5, 5), ("omniglot", 1, 20), ("omniglot", 5, 20))
    return {k: (a, None, source) for k, a in zip(keys, accs, strict=True)}


# row -> (dataset, shot) or (dataset, shot, way) -> (accuracy, ci95 or None, source)
PUBLISHED: dict[str, dict[tuple, tuple[float, float | None, str]]] = {
    "protonet-conv4": {
        ("miniimagenet", 1): (49.4, 0.8, "Snell et al. 2017"),
        ("miniimagenet", 5): (68.2, 0.7, "Snell et al. 2017"),
        **_omniglot((98.8, 99.7, 96.0, 98.9), "Snell et al. 2017"),
    },
    "siamese-conv4": _omniglot((97.3, 98.4, 88.2, 97.0), "Koch et al. 2015, as in Vinyals et al. 2016"),
    "matchingnet-conv4": {
        ("miniimagenet", 1): (43.4, 0.8, "Vinyals et al. 2016, as in Ravi & Larochelle 2017"),
        ("miniimagenet", 5): (55.3, 0.7, "Vinyals et al. 2016, as in Ravi & Larochelle 2017"),
        **_omniglot((98.1, 98.9, 93.8, 98.5), "Vinyals et al. 2016"),
    },
    "maml-conv4": {
        ("miniimagenet", 1): (48.7, 1.8, "Finn et al. 2017"),
        ("miniimagenet", 5): (63.1, 0.9, "Finn et al. 2017"),
        ("fc100", 1): (38.1, 1.7, "TADAM's re-run, Oreshkin et al. 2018"),
        ("fc100", 5): (50.4, 1.0, "TADAM's re-run, Oreshkin et al. 2018"),
        ("fc100", 10): (56.2, 0.8, "TADAM's re-run, Oreshkin et al. 2018"),
        **_omniglot((98.7, 99.9, 95.8, 98.9), "Finn et al. 2017"),
    },
    "fomaml-conv4": {
        ("miniimagenet", 1): (48.07, 1.75, "Finn et al. 2017"),
        ("miniimagenet", 5): (63.15, 0.91, "Finn et al. 2017"),
    },
    "mtl": {
        ("miniimagenet", 1): (60.2, 1.8, "Sun et al. 2019, SS without HT"),
        ("miniimagenet", 5): (74.3, 0.9, "Sun et al. 2019, SS without HT"),
        ("fc100", 1): (43.6, 1.8, "Sun et al. 2019, SS without HT"),
        ("fc100", 5): (55.4, 0.9, "Sun et al. 2019, SS without HT"),
        ("fc100", 10): (62.4, 0.8, "Sun et al. 2019, SS without HT"),
    },
    "mtl-ht": {
        ("miniimagenet", 1): (61.2, 1.8, "Sun et al. 2019"),
        ("miniimagenet", 5): (75.5, 0.8, "Sun et al. 2019"),
        ("fc100", 1): (45.1, 1.8, "Sun et al. 2019"),
        ("fc100", 5): (57.6, 0.9, "Sun et al. 2019"),
        ("fc100", 10): (63.4, 0.8, "Sun et al. 2019"),
        ("tieredimagenet", 1): (65.6, 1.8, "official TF code README"),
        ("tieredimagenet", 5): (80.6, 0.9, "official TF code README"),
    },
}


def published(row: str, cfg: Config) -> dict | None:
    """``{"acc", "ci95", "source"}`` for ``row`` on the pipeline's dataset, shot and way, or None."""
    d, m = cfg.data, cfg.meta
    if d.dataset == "omniglot":
        if _source_format(Path(d.root).expanduser()) != "omniglot-vinyals":
            return None
        key: tuple = (d.dataset, m.shot, m.way)
    elif m.way == 5:
        key = (d.dataset, m.shot)
    else:
        return None
    hit = PUBLISHED.get(row, {}).get(key)
    return None if hit is None else {"acc": hit[0], "ci95": hit[1], "source": hit[2]}


def _source_format(root: Path) -> str | None:
    try:
        return load_manifest(root).get("source_format")
    except MtlError:
        return None
