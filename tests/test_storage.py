"""dasd_lib.storage: the one way files are written. A failing write (full disk) leaves the
old content and no temporary file; a figure or table is never left truncated."""
from __future__ import annotations

import errno
import os

import pandas as pd
import pytest

from dasd_lib import storage


def _full_disk(*_args, **_kw):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("write", [
    lambda p: storage.atomic_write(p, "new text"),
    lambda p: storage.atomic_csv(pd.DataFrame({"a": [1, 2]}), p),
])
@pytest.mark.fault
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch, write):
    target = tmp_path / "results.csv"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        write(target)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_writes_land_whole(tmp_path):
    storage.atomic_write(tmp_path / "a" / "b.txt", "héllo")  # creates the folder
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo"
    storage.atomic_write(tmp_path / "c.bin", b"\x00\x01")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    storage.atomic_csv(pd.DataFrame({"x": [1.5]}), tmp_path / "t.csv")
    assert pd.read_csv(tmp_path / "t.csv")["x"].tolist() == [1.5]
    with pytest.raises(ValueError):
        with storage.atomic_file(tmp_path / "fig.png") as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("the writer failed")
    assert not (tmp_path / "fig.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
