"""xdrec.files, the one filesystem layer, on a local folder and on a real S3-compatible server."""
from __future__ import annotations

import os

import pytest

from xdrec import files


def test_locations_and_joins():
    assert files.location("file:///data/wh/") == "/data/wh"
    assert files.location("relative/wh") == os.path.abspath("relative/wh")
    assert files.location("s3a://bucket/wh/") == "s3a://bucket/wh"
    assert files.join("s3a://bucket/wh", "models", "joint") == "s3a://bucket/wh/models/joint"
    assert files.join("dbfs:/xdrec", "delta") == "dbfs:/xdrec/delta"
    assert files.join("/data/wh", "delta") == "/data/wh/delta"
    assert files.is_local("/Volumes/main/xdrec") and files.is_local("file:///tmp")
    assert not files.is_local("abfss://container@account.dfs.core.windows.net/wh")
    assert files.basename("s3a://bucket/wh/models/joint/3f2a") == "3f2a"
    assert files.parent("s3a://bucket/wh/models/joint/LATEST") == "s3a://bucket/wh/models/joint"


def test_a_store_without_its_filesystem_package_names_the_scheme():
    with pytest.raises(OSError, match="no filesystem for nosuchstore://"):
        files.exists("nosuchstore://bucket/wh")


def exercise(root: str) -> None:
    """Every verb of the layer under ``root``, the same whatever the store."""
    pointer = files.join(root, "models", "joint", "LATEST")
    assert not files.exists(pointer) and not files.is_file(pointer) and files.listdir(files.join(root, "models")) == []
    files.write_text(pointer, "v1\n")
    files.write_text(pointer, "v2\n")  # replaced whole
    assert files.read_text(pointer) == "v2\n" and files.is_file(pointer)
    lock = files.join(root, "_LOCK")
    assert files.create(lock, "first") and not files.create(lock, "second")  # only where none exists
    assert files.read_text(lock) == "first"
    files.remove(lock)
    files.write_json(files.join(root, "tuning", "best.json"), {"rank": 64})
    assert files.read_json(files.join(root, "tuning", "best.json")) == {"rank": 64}

    folder = files.join(root, "models", "joint", "v2")
    with files.staged_folder(folder) as staging:
        assert os.path.isdir(staging)  # always a local folder, whatever the store
        for name, content in (("model.pt", b"\x00weights"), ("artifact.json", b"{}")):
            with open(os.path.join(staging, name), "wb") as handle:
                handle.write(content)
    assert files.listdir(folder) == ["artifact.json", "model.pt"]
    assert files.read_bytes(files.join(folder, "model.pt")) == b"\x00weights"
    with files.open_file(files.join(folder, "artifact.json")) as handle:
        assert handle.read() == b"{}"
    with files.local_copy(folder) as local:
        assert sorted(os.listdir(local)) == ["artifact.json", "model.pt"]
    assert files.matches(files.join(root, "models", "*", "LATEST")) and files.matches(folder)
    assert not files.matches(files.join(root, "models", "*", "PREVIOUS"))

    with pytest.raises(RuntimeError), files.staged_folder(files.join(root, "models", "joint", "v3")) as staging:
        with open(os.path.join(staging, "model.pt"), "wb") as handle:
            handle.write(b"half")
        raise RuntimeError("killed mid-write")
    assert not files.exists(files.join(root, "models", "joint", "v3"))  # a failed folder leaves nothing
    assert files.listdir(files.join(root, "models", "joint")) == ["LATEST", "v2"]  # and no staging debris

    files.move(pointer, files.join(root, "models", "joint", "LATEST.old"))
    assert not files.exists(pointer) and files.read_text(files.join(root, "models", "joint", "LATEST.old")) == "v2\n"
    files.remove(files.join(root, "models"))
    files.remove(files.join(root, "models"))  # nothing left to remove is fine
    # (SeaweedFS, unlike S3, keeps empty folders a while: check the files.)
    assert not files.is_file(files.join(folder, "model.pt")) and not files.matches(files.join(root, "models", "*", "L*"))


def test_every_verb_on_a_local_folder(tmp_path):
    exercise(str(tmp_path / "wh"))
    exercise("file://" + str(tmp_path / "uri-wh"))


def test_every_verb_on_an_object_store(s3_bucket):
    exercise(f"s3a://{s3_bucket}/wh")
