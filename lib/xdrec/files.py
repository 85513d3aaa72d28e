"""The one filesystem layer: every file xdrec keeps outside Delta (artifacts, pointers, checkpoints, staged
examples, tuning, baselines, reports) is read and written here, at a local path or a URI.

A location is a local path (made absolute), ``file://...``, or any URI fsspec has a filesystem for:
``s3a://`` and ``s3://`` (s3fs), ``abfss://`` (adlfs), ``gs://`` (gcsfs), ``/Volumes/...`` and ``dbfs:/``
(Databricks' FUSE mount at ``/dbfs``). Spark gets the same URI (``s3a://`` for Hadoop), Python the
filesystem fsspec maps it to. Credentials and endpoints come from the store's usual environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).

Every write is whole or absent: a local file is written to a hidden sibling and renamed over its
target; an object store's single PUT is atomic already. Folders are written once under a versioned name
and pointed at by a small pointer file written last (``models/<method>/LATEST``, ``_ROWS``)::

    write_text(join(warehouse, "models", "joint", "LATEST"), "3f2a9c\\n")
    with staged_folder(join(warehouse, "models", "joint", "3f2a9c")) as folder:   # a local folder
        torch.save(weights, os.path.join(folder, "model.pt"))
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from typing import IO, Any, Iterator

# Hadoop's names for stores whose Python filesystem goes by another.
_FSSPEC_SCHEMES = {"s3a": "s3", "s3n": "s3"}


def _scheme(path: str) -> str:
    head, separator, _ = path.partition("://")
    if separator and "/" not in head:
        return head
    return "dbfs" if path.startswith("dbfs:/") else ""


def location(path: str) -> str:
    """``path`` in the form Spark and this layer share: a local path absolute (``file://`` dropped), a URI as it is.

    >>> location("file:///data/wh"), location("s3a://bucket/wh/")
    ('/data/wh', 's3a://bucket/wh')
    """
    scheme = _scheme(path)
    if scheme == "file":
        return os.path.abspath(path[len("file://"):])
    if scheme:
        return path.rstrip("/")
    return os.path.abspath(path)


def is_local(path: str) -> bool:
    return not _scheme(location(path))


def join(base: str, *names: str) -> str:
    """``base``/``names``, for a local path or a URI alike.

    >>> join("s3a://bucket/wh", "models", "joint")
    's3a://bucket/wh/models/joint'
    """
    base = location(base)
    return os.path.join(base, *names) if is_local(base) else posixpath.join(base, *names)


def basename(path: str) -> str:
    return posixpath.basename(location(path))


def parent(path: str) -> str:
    path = location(path)
    return os.path.dirname(path) if is_local(path) else posixpath.dirname(path)


def filesystem(path: str):
    """(fsspec filesystem, path within it) for ``path``: for readers that take a filesystem (Petastorm)."""
    import fsspec

    path = location(path)
    scheme = _scheme(path)
    if scheme == "dbfs":
        return fsspec.filesystem("file"), "/dbfs/" + path[len("dbfs:/"):].lstrip("/")
    if not scheme:
        return fsspec.filesystem("file"), path
    protocol = _FSSPEC_SCHEMES.get(scheme, scheme)
    try:
        # No listings cache: another process (a training worker, an executor) may have written since.
        store = fsspec.filesystem(protocol, use_listings_cache=False)
    except (ImportError, ValueError) as error:
        raise OSError(f"no filesystem for {scheme}:// in this environment ({error})") from error
    return store, store._strip_protocol(f"{protocol}://{path.split('://', 1)[1]}")


def _info(path: str) -> dict | None:
    """What the store says of ``path``, None when nothing is there. Unlike fsspec's ``exists``, a store that
    cannot be reached or refuses the keys raises instead of reading as "missing"."""
    store, inner = filesystem(path)
    try:
        return store.info(inner)
    except (FileNotFoundError, NotADirectoryError):  # the latter: a local path under a file
        return None


def exists(path: str) -> bool:
    return _info(path) is not None


def matches(pattern: str) -> bool:
    """Whether the file, folder or glob ``pattern`` matches anything."""
    store, inner = filesystem(pattern)
    return bool(store.glob(inner)) if any(char in inner for char in "*?[") else exists(pattern)


def is_file(path: str) -> bool:
    info = _info(path)
    return info is not None and info["type"] == "file"


def listdir(path: str) -> list[str]:
    """The names in the folder ``path``, sorted; [] when it does not exist."""
    info = _info(path)
    if info is None or info["type"] != "directory":
        return []
    store, inner = filesystem(path)
    return sorted(posixpath.basename(entry.rstrip("/")) for entry in store.ls(inner, detail=False))


@contextmanager
def open_file(path: str, mode: str = "rb") -> Iterator[IO]:
    """A file object to read ``path`` with (pandas, numpy and pyarrow take it)."""
    store, inner = filesystem(path)
    with store.open(inner, mode) as handle:
        yield handle


def read_bytes(path: str) -> bytes:
    store, inner = filesystem(path)
    return store.cat_file(inner)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


@contextmanager
def _written_beside(inner: str, data: bytes) -> Iterator[str]:
    """A hidden file beside the local path ``inner`` holding ``data``, for the block to move or link into
    place; removed after the block if it is still there."""
    folder = os.path.dirname(inner)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(inner)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        yield temporary
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_bytes(path: str, data: bytes) -> None:
    """Write the file ``path`` whole: a reader, or a run killed mid-write, sees the old content or the new."""
    store, inner = filesystem(path)
    if not _is_local_store(store):
        store.pipe_file(inner, data)  # one PUT: an object appears whole or not at all
        return
    with _written_beside(inner, data) as temporary:
        os.replace(temporary, inner)


def create(path: str, text: str) -> bool:
    """Write the file ``path`` only where none exists; whether this call wrote it. Of several processes
    creating one path at once, one wins: a hard link locally, a conditional PUT (If-None-Match) on a store
    (s3fs). A store whose filesystem takes no write mode is looked at, then written: not exclusive.

    >>> create(os.path.join(tempfile.mkdtemp(), "LOCK"), "mine")
    True
    """
    store, inner = filesystem(path)
    if not _is_local_store(store):
        try:
            store.pipe_file(inner, text.encode("utf-8"), mode="create")
            return True
        except OSError:  # s3fs raises the store's PreconditionFailed as an OSError
            if exists(path):
                return False
            raise
        except TypeError:  # a filesystem whose writes take no mode: look, then write (not exclusive)
            if exists(path):
                return False
            store.pipe_file(inner, text.encode("utf-8"))
            return True
    # Linked into place whole, so that no reader sees it half written.
    with _written_beside(inner, text.encode("utf-8")) as temporary:
        try:
            os.link(temporary, inner)
        except FileExistsError:
            return False
        except OSError:  # a mount without hard links (FUSE): an exclusive open, briefly empty to readers
            try:
                with open(inner, "x", encoding="utf-8") as handle:
                    handle.write(text)
            except FileExistsError:
                return False
        return True


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str))


def move(source: str, destination: str) -> None:
    """Move the file ``source`` to ``destination`` (replacing it): a rename locally, copy and delete on a store."""
    store, inner = filesystem(source)
    _, target = filesystem(destination)
    if _is_local_store(store):
        os.replace(inner, target)
    else:
        store.mv(inner, target)


def remove(path: str) -> None:
    """Remove the file or folder ``path``; nothing to do when it is not there."""
    store, inner = filesystem(path)
    if exists(path):
        store.rm(inner, recursive=True)


def _is_local_store(store) -> bool:
    protocols = store.protocol if isinstance(store.protocol, tuple) else (store.protocol,)
    return "file" in protocols


@contextmanager
def staged_folder(path: str) -> Iterator[str]:
    """A new local folder to write the files of folder ``path`` into; when the block succeeds they are at
    ``path``, all of them: locally by one rename over any old folder, on a store by uploading each file
    (write such folders once, under a name nobody reads before its pointer names it). Nothing of the
    staging is left when the block fails. Its name starts with a dot, which Spark and Petastorm skip."""
    store, inner = filesystem(path)
    local = _is_local_store(store)
    if local:
        os.makedirs(os.path.dirname(inner), exist_ok=True)
        staging = os.path.join(os.path.dirname(inner), f".{os.path.basename(inner)}.tmp-{uuid.uuid4().hex}")
    else:
        staging = os.path.join(tempfile.mkdtemp(prefix="xdrec-"), "staging")
    os.makedirs(staging)
    try:
        yield staging
        if local:
            shutil.rmtree(inner, ignore_errors=True)  # rename cannot replace a folder that has files
            os.rename(staging, inner)
        else:
            store.put(staging + "/", inner, recursive=True)
    finally:
        shutil.rmtree(staging if local else os.path.dirname(staging), ignore_errors=True)


@contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local folder holding the folder ``path``'s files: ``path`` itself when it is local, else a
    temporary download removed after the block."""
    store, inner = filesystem(path)
    if _is_local_store(store):
        yield inner
        return
    folder = tempfile.mkdtemp(prefix="xdrec-")
    try:
        store.get(inner + "/", folder + "/", recursive=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
