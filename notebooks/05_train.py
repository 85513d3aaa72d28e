# Databricks notebook source
# MAGIC %md
# MAGIC # xdrec: the train stage
# MAGIC Trains every method in `train.methods` with the configured launcher (Horovod or TorchDistributor), fits the factor models and their blend (with `train.ensemble`, also the methods' ensemble), and selects the model to serve on validation.
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

result = run_stage(spark, config, "train")

# COMMAND ----------

print(result["selected"]["reason"])
