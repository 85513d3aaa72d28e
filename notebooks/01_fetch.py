# Databricks notebook source
# MAGIC %md
# MAGIC # xdrec: the fetch stage
# MAGIC Creates the raw input files of the configured dataset under `<warehouse>/raw/<data.name>` when they are missing (MovieLens-1M, CDRIB, synthetic); with `data.fetch: none` it only checks that the inputs exist.
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

result = run_stage(spark, config, "fetch")

# COMMAND ----------

print(result)
