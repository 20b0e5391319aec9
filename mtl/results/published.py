"""Published accuracies beside which ``mtl compare`` shows its rows (5-way, %, ± 95% CI).

From the papers themselves and the MTL paper's results table (Sun et al. 2019): a row is
keyed by the ``mtl compare`` row name whose method and backbone the paper used, then by (dataset,
shot) for 5-way, (dataset, shot, way) otherwise. Omniglot numbers use the Vinyals et al. split with
rotations, so they are shown only for an Omniglot prepared with ``--split-lists`` (its manifest says
``omniglot-vinyals``): the caller, which reads the prepared dataset, passes its ``source_format``
(:func:`mtl.data.prepare.manifest.source_format`); this module reads no file.
"""

from __future__ import annotations

from mtl.config import Config

__all__ = [
    "PAPER_TABLE",
    "PUBLISHED",
    "PUBLISHED_BREAKDOWNS",
    "VINYALS",
    "published",
    "published_breakdowns",
]

# ``mtl compare --methods paper``: the MTL paper's comparison table, in its order, each method on its
# own backbone (Sun et al. 2019).
PAPER_TABLE = ("matchingnet-conv4", "meta-lstm-conv4", "maml-conv4", "protonet-conv4", "tadam", "mtl-ht")


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
    "meta-lstm-conv4": {
        ("miniimagenet", 1): (43.44, 0.77, "Ravi & Larochelle 2017"),
        ("miniimagenet", 5): (60.60, 0.71, "Ravi & Larochelle 2017"),
    },
    "tadam": {
        ("miniimagenet", 1): (58.5, 0.3, "Oreshkin et al. 2018"),
        ("miniimagenet", 5): (76.7, 0.3, "Oreshkin et al. 2018"),
        ("miniimagenet", 10): (80.8, 0.3, "Oreshkin et al. 2018"),
        ("fc100", 1): (40.1, 0.4, "Oreshkin et al. 2018"),
        ("fc100", 5): (56.1, 0.4, "Oreshkin et al. 2018"),
        ("fc100", 10): (61.6, 0.5, "Oreshkin et al. 2018"),
    },
    # The MTL paper's ablation, first row: [Θ; θ] meta-learned MAML-style from random initialisation.
    "from-scratch": {
        ("miniimagenet", 1): (45.3, None, "Sun et al. 2019, train from scratch"),
        ("miniimagenet", 5): (64.6, None, "Sun et al. 2019, train from scratch"),
        ("fc100", 1): (38.4, None, "Sun et al. 2019, train from scratch"),
        ("fc100", 5): (52.6, None, "Sun et al. 2019, train from scratch"),
        ("fc100", 10): (58.6, None, "Sun et al. 2019, train from scratch"),
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


# Santoro et al. 2016, Table 1: Omniglot, 5 classes a sequence, one-hot labels, 1st..5th and 10th instance.
PUBLISHED_BREAKDOWNS: dict[str, dict[str, dict[str, dict]]] = {
    "mann": {
        "by_presentation": {
            "MANN, Santoro et al. 2016 (Table 1)": {
                "at": [1, 2, 3, 4, 5, 10],
                "acc": [36.4, 82.8, 91.0, 92.6, 94.9, 98.1],
            },
            "LSTM, Santoro et al. 2016 (Table 1)": {
                "at": [1, 2, 3, 4, 5, 10],
                "acc": [24.4, 49.5, 55.3, 61.0, 63.6, 62.5],
            },
        }
    }
}


VINYALS = "omniglot-vinyals"  # the source format of an Omniglot prepared with the Vinyals et al. split


def published_breakdowns(method: str, cfg: Config, *, source_format: str | None = None) -> dict[str, dict]:
    """The published breakdowns of ``method`` in the pipeline's setting (``{name: {source: {"at",
    "acc"}}}``): MANN's Table 1 for 5-way Omniglot prepared with the Vinyals et al. split lists (its
    423 test characters, rotations as classes, are the paper's: ``source_format``, the prepared
    dataset's, is :data:`VINYALS`); none elsewhere."""
    found = PUBLISHED_BREAKDOWNS.get(method)
    if found is None or cfg.data.dataset != "omniglot" or cfg.meta.way != 5:
        return {}
    return found if source_format == VINYALS else {}


def published(row: str, cfg: Config, *, source_format: str | None = None) -> dict | None:
    """``{"acc", "ci95", "source"}`` for ``row`` on the pipeline's dataset, shot and way, or None;
    Omniglot's only where ``source_format``, the prepared dataset's, is :data:`VINYALS`."""
    d, m = cfg.data, cfg.meta
    if d.dataset == "omniglot":
        if source_format != VINYALS:
            return None
        key: tuple = (d.dataset, m.shot, m.way)
    elif m.way == 5:
        key = (d.dataset, m.shot)
    else:
        return None
    hit = PUBLISHED.get(row, {}).get(key)
    return None if hit is None else {"acc": hit[0], "ci95": hit[1], "source": hit[2]}
