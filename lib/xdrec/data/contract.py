"""The input contract (docs/data.md): the columns xdrec reads from each kind of input.

Each kind lists its required columns, then its optional ones (read as null when the input lacks them).
A configured ``columns`` mapping renames an input's own columns to these names.
"""
from __future__ import annotations

INTERACTIONS = "interactions"
ITEMS = "items"
USER_LINKS = "user_links"

COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    INTERACTIONS: (("user_id", "item_id"), ("rating", "timestamp", "weight", "split")),
    ITEMS: (("item_id", "title"), ("description", "category")),
    USER_LINKS: (("domain_a", "user_id_a", "domain_b", "user_id_b"), ()),
}

# Where an input can come from: files (csv with a header line unless told otherwise, tsv, parquet, JSON
# lines), a Delta table by path, or a table of the Spark catalogue (metastore) by name.
FORMATS = ("csv", "tsv", "parquet", "json", "delta", "table")
# The values of an interaction's optional ``split`` (a split given with the data, docs/data.md).
SPLITS = ("train", "valid", "test")


def all_columns(kind: str) -> tuple[str, ...]:
    required, optional = COLUMNS[kind]
    return (*required, *optional)

# The user groups that metrics are split by: users with target training history ("warm"), users with
# none, cold-start users known only from the source domain ("cold"), and both together ("all").
USER_GROUPS = ("warm", "cold", "all")
