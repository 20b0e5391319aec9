"""Published accuracies beside which ``mtl compare`` shows its rows (5-way, %, ± 95% CI).

From the papers themselves and the MTL paper's results table (Sun et al. 2019): a row is
keyed by the ``mtl compare`` row name whose method and backbone the paper used, then by (dataset,
shot). Omniglot numbers use the Vinyals et al. split with rotations, which mtl's Omniglot does not
yet follow, so none are listed.
"""

from __future__ import annotations

from mtl.config import Config

__all__ = ["PUBLISHED", "published"]

# row -> (dataset, shot) -> (accuracy, ci95 or None, source)
PUBLISHED: dict[str, dict[tuple[str, int], tuple[float, float | None, str]]] = {
    "protonet-conv4": {
        ("miniimagenet", 1): (49.4, 0.8, "Snell et al. 2017"),
        ("miniimagenet", 5): (68.2, 0.7, "Snell et al. 2017"),
    },
    "matchingnet-conv4": {
        ("miniimagenet", 1): (43.4, 0.8, "Vinyals et al. 2016, as in Ravi & Larochelle 2017"),
        ("miniimagenet", 5): (55.3, 0.7, "Vinyals et al. 2016, as in Ravi & Larochelle 2017"),
    },
    "maml-conv4": {
        ("miniimagenet", 1): (48.7, 1.8, "Finn et al. 2017"),
        ("miniimagenet", 5): (63.1, 0.9, "Finn et al. 2017"),
        ("fc100", 1): (38.1, 1.7, "TADAM's re-run, Oreshkin et al. 2018"),
        ("fc100", 5): (50.4, 1.0, "TADAM's re-run, Oreshkin et al. 2018"),
        ("fc100", 10): (56.2, 0.8, "TADAM's re-run, Oreshkin et al. 2018"),
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
    """``{"acc", "ci95", "source"}`` for ``row`` on the pipeline's dataset and shot (5-way only)."""
    if cfg.meta.way != 5:
        return None
    hit = PUBLISHED.get(row, {}).get((cfg.data.dataset, cfg.meta.shot))
    return None if hit is None else {"acc": hit[0], "ci95": hit[1], "source": hit[2]}
