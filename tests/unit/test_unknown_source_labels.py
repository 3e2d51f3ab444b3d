"""A data folder newer than shared/taxonomy/source_labels.json: unknown labels are dropped with a warning naming
them (issue 14: `evaluate text --data` on a folder with articleType 'Blazers' ended in a KeyError)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from shared.taxonomy.labels import label_row, load_labeled

FIELDS = ["id", "dataset", "file", "split", "category", "width", "height", "title", "gender", "baseColour", "season",
          "usage", "kids"]


def _row(dataset: str, category: str, i: int = 0) -> dict[str, str]:
    return {"id": f"x{i}", "dataset": dataset, "file": f"images/x{i}.jpg", "split": "test", "category": category,
            "width": "60", "height": "80", "title": "Men Navy Blazer", "gender": "Men", "baseColour": "Navy Blue",
            "season": "Fall", "usage": "Formal", "kids": "False"}


@pytest.mark.parametrize(("dataset", "label"), [("myntra_small", "Blazers"), ("clothing_dataset", "Cape"),
                                                ("colorful_fashion", "tiara")])
def test_unknown_source_label_is_dropped_with_a_warning(dataset: str, label: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.taxonomy.labels"):
        item = label_row(_row(dataset, label), Path("."))
    assert item.category_id is None and item.source_label == label
    assert any(repr(label) in r.getMessage() and "source_labels.json" in r.getMessage() for r in caplog.records)


def test_load_labeled_skips_unknown_labels_instead_of_failing(tmp_path: Path) -> None:
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerow(_row("myntra_small", "Blazers", 1))
        w.writerow(_row("myntra_small", "Jackets", 2))
    items = load_labeled(tmp_path)
    assert [i.id for i in items] == ["x2"]
    assert [i.id for i in load_labeled(tmp_path, keep_dropped=True)] == ["x1", "x2"]
