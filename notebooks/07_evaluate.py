# Databricks notebook source
# MAGIC %md
# MAGIC # xdrec: the evaluate stage
# MAGIC Evaluates every model and baseline on the test split (full and sampled ranking, paired bootstrap intervals) and writes the report to `<warehouse>/reports/latest`.
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

result = run_stage(spark, config, "evaluate")

# COMMAND ----------

from xdrec import files

print(files.read_text(files.join(config.warehouse, "reports", "latest", "summary.md"))[:3000])
