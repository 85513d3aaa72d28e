"""A model artifact as an MLflow pyfunc: each user's top-K target items, ranked as the score stage ranks them.

The train stage logs every model with it (:func:`xdrec.training.tracking.log_training`) as MLflow's
"model from code": MLflow stores :data:`CODE` (this package's ``pyfunc_model.py``) and the artifact folder,
and loading runs that file; nothing is unpickled. Input: ``user_id`` (string) and, optionally, ``seen``
(the item ids to leave out, as the score stage leaves out the user's training items). Output: a column
``items``, the ids of the ``k`` best other target items, best first (``k`` from the ``k`` param, else the
model's ``score.k``); an empty list for a user the model does not know. On Spark, as a struct (MLflow's
``array<string>`` result type would make one string of each list)::

    recommend = mlflow.pyfunc.spark_udf(spark, "models:/xdrec-movielens-1m@champion", "items array<string>")
    users.withColumn("items", recommend(struct("user_id", "seen")).items)
"""
from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from xdrec.modeling.topk import TopKScorer, resolve_device
from xdrec.training import artifact as artifacts

CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc_model.py")
ARTIFACT_KEY = "xdrec_artifact"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "user_id"), ColSpec(mlflow.types.schema.Array("string"), "seen", required=False)]),
    outputs=Schema([ColSpec(mlflow.types.schema.Array("string"), "items")]),
    params=ParamSchema([ParamSpec("k", "long", 0)]),
)


class TopKRecommender(mlflow.pyfunc.PythonModel):
    """The pyfunc around one artifact (see the module doc)."""

    def load_context(self, context) -> None:
        loaded = artifacts.load(context.artifacts[ARTIFACT_KEY])
        target = loaded.meta["target_domain"]
        items = loaded.item_index[loaded.item_index["domain"] == target].set_index("item_idx")["item_id"]
        self.k = int(loaded.meta["config"]["score"]["k"])
        self.scorer = TopKScorer(loaded.model, items.index.to_numpy(), self.k, resolve_device("auto"))
        self.item_ids = items.loc[self.scorer.candidates].to_numpy()  # by candidate position
        self.item_idx = pd.Series(items.index.to_numpy(), index=items.to_numpy())
        self.user_idx = loaded.user_index.set_index("user_id")["user_idx"]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k") or self.k)
        if k != self.scorer.k:
            self.scorer = TopKScorer(self.scorer.model, self.scorer.candidates, k, self.scorer.device)
        users = self.user_idx.reindex(model_input["user_id"].astype(str)).to_numpy()
        known = ~np.isnan(users.astype(float))
        seen = None
        if "seen" in model_input:
            seen = [self.item_idx.reindex(list(items) if items is not None else []).dropna().to_numpy(np.int64)
                    for items in model_input["seen"][known]]
        items, scores = self.scorer.top_k(users[known].astype(np.int64), seen)
        ranked = iter([list(self.item_ids[np.searchsorted(self.scorer.candidates, row[np.isfinite(row_scores)])])
                       for row, row_scores in zip(items, scores)])
        return pd.DataFrame({"items": [next(ranked) if is_known else [] for is_known in known]}, index=model_input.index)
