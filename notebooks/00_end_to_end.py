# Databricks notebook source
# MAGIC %md
# MAGIC # xdrec: the whole pipeline
# MAGIC Runs every stage in order (fetch, ingest, features, tune, train, score, evaluate); each skips the work its unchanged inputs already did.
# MAGIC
# MAGIC Widgets: `conf`, a config name (`demo`, `synthetic`, ...), a path or a URI; `overrides`, `section.key=value`
# MAGIC settings, one per line. On Databricks xdrec uses the notebook's session; install the xdrec wheel on the
# MAGIC cluster first (README, "Running on a cluster"). Outside Databricks the widgets are read from
# MAGIC `$XDREC_CONF` and `$XDREC_OVERRIDES`.

# COMMAND ----------

from xdrec.notebook import widget_config
from xdrec.pipeline import run_pipeline
from xdrec.spark import get_spark

config = widget_config()
spark = get_spark(config.spark)

# COMMAND ----------

results = run_pipeline(spark, config)

# COMMAND ----------

from xdrec.data import tables

print(results["train"]["selected"]["reason"])
tables.read(spark, config.warehouse, tables.METRICS).where("user_group = 'cold'").orderBy("model", "metric").show(50)
