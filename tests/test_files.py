"""Every file a run or a command writes is written whole or not at all: a crash keeps the previous one."""

import csv
from pathlib import Path

import pytest

from conftest import make_datamodule, make_image_folder
from transferlab.cli.predict import Prediction, write_csv
from transferlab.data.scan import Finding, write_skipped


@pytest.fixture
def crash_halfway(monkeypatch: pytest.MonkeyPatch):
    """``Path.write_text`` writes half of the text, then fails as a full disk would."""
    monkeypatch.setattr(Path, "write_text", _half_then_fail)


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_split_json_survives_a_crash_while_it_is_rewritten(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=5, splits=("train",))
    split = tmp_path / "run" / "split.json"
    split.parent.mkdir()
    split.write_text("previous")
    data = make_datamodule(root, run_dir=str(split.parent))
    write_text = Path.write_text
    with monkeypatch.context() as patch:  # the scan's cache is written first, and fine
        patch.setattr(Path, "write_text", lambda self, text, **kwargs: (
            _half_then_fail(self, text) if "split" in self.name else write_text(self, text, **kwargs)))
        with pytest.raises(OSError, match="No space"):
            data.setup("fit")
    assert (split.parent / "scan.json").is_file()
    assert split.read_text() == "previous" and leftovers(split.parent) == []


def test_skipped_txt_survives_a_crash_while_it_is_rewritten(tmp_path, crash_halfway):
    skipped = tmp_path / "skipped.txt"
    with open(skipped, "w") as file:
        file.write("previous")
    with pytest.raises(OSError, match="No space"):
        write_skipped(skipped, [Finding(f"/data/{i}.jpg", "truncated: cut short") for i in range(10)])
    assert skipped.read_text() == "previous" and leftovers(tmp_path) == []


def test_the_predictions_csv_survives_a_crash_while_it_is_rewritten(tmp_path, monkeypatch):
    output = tmp_path / "preds.csv"
    write_csv([Prediction("a.jpg", "ant", 0.9)], output)
    previous = output.read_text()

    def header_then_fail(self, rows):
        raise OSError("No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", header_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_csv([Prediction("b.jpg", "bee", 0.8)], output)
    assert output.read_text() == previous and leftovers(tmp_path) == []


def _half_then_fail(self: Path, text: str, *args, **kwargs) -> int:
    with open(self, "w") as file:
        file.write(text[: len(text) // 2])
    raise OSError("No space left on device")
