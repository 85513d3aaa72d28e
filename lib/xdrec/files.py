"""Local files written whole or not at all: the one atomic-write helper of the package."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary sibling of ``path`` to write a file or a folder to; when the block succeeds it replaces
    ``path`` whole, so a reader (or a run killed mid-write) sees the old content or the new, never a part.

    Nothing of the temporary is left when the block fails. The name starts with a dot, which Spark and
    Petastorm skip when they list a folder::

        with atomic_path("models/finetune/LATEST") as temporary:
            with open(temporary, "w") as handle:
                handle.write("3f2a9c\\n")
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        yield temporary
        if os.path.isdir(temporary):
            shutil.rmtree(path, ignore_errors=True)  # rename cannot replace a folder that has files
            os.rename(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)
