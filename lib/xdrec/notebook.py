"""What xdrec's notebooks (``notebooks/``, Databricks source format) share: the config their widgets name.

On Databricks the widgets are ``dbutils`` widgets, set by hand or by a job's ``base_parameters``. Anywhere
else (a local Jupyter, the tests) there is no ``dbutils``, and the same two settings come from the
environment::

    config = widget_config()   # widgets "conf" and "overrides", or $XDREC_CONF and $XDREC_OVERRIDES
"""
from __future__ import annotations

import os

from xdrec.config import DEFAULT_CONF, Config, load_config

WIDGETS = {"conf": DEFAULT_CONF, "overrides": ""}


def _dbutils():
    """Databricks' dbutils for the active session, or None off Databricks."""
    try:
        from pyspark.dbutils import DBUtils  # only Databricks runtimes ship it
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    return DBUtils(SparkSession.getActiveSession())


def widget_values() -> dict[str, str]:
    """``conf`` (a name in conf/, a path or a URI) and ``overrides`` (``section.key=value``, one per line or
    separated by ``;``): the notebook's widgets, created with their defaults when missing."""
    dbutils = _dbutils()
    if dbutils is None:
        return {name: os.environ.get(f"XDREC_{name.upper()}", default) for name, default in WIDGETS.items()}
    for name, default in WIDGETS.items():
        dbutils.widgets.text(name, default)
    return {name: dbutils.widgets.get(name) for name in WIDGETS}


def widget_config() -> Config:
    """The config the widgets name, with their overrides (:func:`widget_values`)."""
    values = widget_values()
    overrides = [part.strip() for line in values["overrides"].splitlines() for part in line.split(";") if part.strip()]
    return load_config(values["conf"].strip() or DEFAULT_CONF, overrides)
