"""The README's Python API example runs as written and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    (code,) = re.findall(r"<!-- api-example -->\n```python\n(.*?)```", text, flags=re.S)
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the glyphs cache (~/.cache/mtl) stays in the test's folder
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    probs, clf = scope["probs"], scope["clf"]
    assert probs.shape == (6, 3) and torch.allclose(probs.sum(1), torch.ones(6), atol=1e-5)
    assert clf.classes == ["a", "b", "c"]
    assert (tmp_path / "checkpoints" / "api" / "metatrain" / "best.pt").is_file()
    import mtl

    assert sum(p.requires_grad for p in scope["net"].parameters()) == len(
        list(mtl.models.ss.parameters(scope["net"]))
    )

    # the metatrain checkpoint's encoder: SS included, eval mode, (B, 3, 32, 32) -> (B, 256)
    encoder = scope["encoder"]
    assert not encoder.training and len(list(mtl.models.ss.ss_modules(encoder))) > 0
    with torch.no_grad():
        assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 256)

    # saved and loaded (a str path in the example, a Path here), the classifier predicts the same
    assert (tmp_path / "clf.pt").is_file() and repr(clf).startswith("Classifier(method='mtl'")
    assert len(repr(clf)) < 200
    clf.save(tmp_path / "c.pt")
    again = mtl.Classifier.load(tmp_path / "c.pt")
    torch.testing.assert_close(again.predict(scope["images"][3:]), probs)

    # the text below the example: other sizes are resized as files are, and files classify in one batch
    from PIL import Image

    from mtl.data.prepare.images import to_pixels

    images = scope["images"][3:]
    big = [np.asarray(Image.fromarray(x).resize((50, 40))) for x in images]
    as_files = []
    for i, x in enumerate(big):
        Image.fromarray(x).save(tmp_path / f"{i}.png")
        as_files.append(str(tmp_path / f"{i}.png"))
    resized = np.stack([to_pixels(x, 32, 3) for x in big])
    torch.testing.assert_close(clf.predict(big), clf.predict(resized))
    torch.testing.assert_close(torch.from_numpy(clf.probabilities(as_files)), clf.predict(resized))
