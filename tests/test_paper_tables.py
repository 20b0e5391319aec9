"""The paper's two tables as mtl runs them: `mtl compare --methods paper` (its comparison table, in its
order, each method on its own backbone) and `mtl ablate` (its ablation rows), each row beside the
published number for the pipeline's dataset and shot."""

from __future__ import annotations

from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.results.published import PAPER_TABLE, published
from mtl.stages import compare
from mtl.stages.ablate import MTL, MTL_HT, SCRATCH, ablation_rows, paper_numbers


def test_paper_names_the_comparison_table_in_the_papers_order():
    cfg = config.load("pipelines/miniimagenet-1shot.yaml")
    rows = compare.rows(cfg, ["paper"])
    assert list(rows) == list(PAPER_TABLE) == [
        "matchingnet-conv4", "meta-lstm-conv4", "maml-conv4", "protonet-conv4", "tadam", "mtl-ht",
    ]  # fmt: skip
    methods = [row.cfg.method for row in rows.values()]
    assert methods == ["matchingnet", "meta-lstm", "maml", "protonet", "tadam", "mtl"]
    # Each row on its own backbone: Conv-4 for the four older methods, the pipeline's ResNet-12 for
    # TADAM and MTL.
    backbones = [row.cfg.backbone.name for row in rows.values()]
    assert backbones == ["conv4"] * 4 + [cfg.backbone.name] * 2 and cfg.backbone.name != "conv4"
    # A row named twice (paper and on its own) is one row; other rows may follow the table.
    assert list(compare.rows(cfg, ["paper", "mtl-ht", "nc"])) == [*PAPER_TABLE, "nc"]


def test_every_row_of_the_papers_table_has_its_published_number():
    expected = {
        "matchingnet-conv4": (43.4, 55.3),
        "meta-lstm-conv4": (43.44, 60.60),
        "maml-conv4": (48.7, 63.1),
        "protonet-conv4": (49.4, 68.2),
        "tadam": (58.5, 76.7),
        "mtl-ht": (61.2, 75.5),
    }
    for shot in (1, 5):
        cfg = config.load(f"pipelines/miniimagenet-{shot}shot.yaml")
        got = {name: published(name, cfg)["acc"] for name in PAPER_TABLE}
        assert got == {name: accs[shot == 5] for name, accs in expected.items()}
    fc100 = config.load("pipelines/fc100-10shot.yaml")
    assert published("tadam", fc100) == {"acc": 61.6, "ci95": 0.5, "source": "Oreshkin et al. 2018"}


def test_the_ablation_shows_the_papers_numbers_beside_its_rows():
    cfg = config.load("pipelines/miniimagenet-5shot.yaml")
    paper = paper_numbers(cfg, ablation_rows(cfg))
    assert {label: p["acc"] for label, p in paper.items()} == {SCRATCH: 64.6, MTL: 74.3, MTL_HT: 75.5}
    fc100 = config.load("pipelines/fc100-1shot.yaml")
    assert paper_numbers(fc100, ablation_rows(fc100))[SCRATCH]["acc"] == 38.4
    # The MTL rows' numbers are MTL's: another method's ablation shows only the scratch row's.
    other = config.load("pipelines/miniimagenet-5shot.yaml", ["method=protonet"])
    assert list(paper_numbers(other, ablation_rows(other))) == [SCRATCH]


def test_compare_lists_the_paper_set_and_refuses_unknown_rows_naming_it(tmp_path):
    result = CliRunner().invoke(main, ["compare", "--list"])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split()[0] == "paper" and ", ".join(PAPER_TABLE) in result.output
    result = CliRunner().invoke(main, ["compare", "glyphs-1shot", "--methods", "papers"])
    assert result.exit_code == 2
    assert "compare: unknown method 'papers' (known: mtl, " in result.output
    assert result.output.rstrip().endswith("mann; paper: the MTL paper's table)")
