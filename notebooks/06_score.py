# Databricks notebook source
# MAGIC %md
# MAGIC # xdrec: the score stage
# MAGIC Scores every user with the selected model in a pandas UDF and writes the top-K lists to the Delta table `recommendations`.
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

result = run_stage(spark, config, "score")

# COMMAND ----------

from xdrec.data import tables

print(result)
tables.read(spark, config.warehouse, tables.RECOMMENDATIONS).orderBy("user_idx", "rank").show(10)
