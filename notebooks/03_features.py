# Databricks notebook source
# MAGIC %md
# MAGIC # xdrec: the features stage
# MAGIC Builds the feature tables: stable user and item indexes, the cold-start split, text embeddings of the items and the training examples.
# MAGIC
# MAGIC Widgets: `conf`, a config name (`demo`, `synthetic`, ...), a path or a URI; `overrides`, `section.key=value`
# MAGIC settings, one per line. On Databricks xdrec uses the notebook's session; install the xdrec wheel on the
# MAGIC cluster first (README, "Running on a cluster"). Outside Databricks the widgets are read from
# MAGIC `$XDREC_CONF` and `$XDREC_OVERRIDES`.

# COMMAND ----------

from xdrec.notebook import widget_config
from xdrec.pipeline import run_stage
from xdrec.spark import get_spark

config = widget_config()
spark = get_spark(config.spark)

# COMMAND ----------

result = run_stage(spark, config, "features")

# COMMAND ----------

from xdrec.data import tables

print(result)
tables.read(spark, config.warehouse, tables.INDEXED_INTERACTIONS).groupBy("domain", "split").count().orderBy("domain", "split").show()
