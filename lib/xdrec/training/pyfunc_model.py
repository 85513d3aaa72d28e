"""The code MLflow stores with every xdrec pyfunc model and runs to load it (MLflow's models from code):
see :mod:`xdrec.training.pyfunc`."""
import mlflow

from xdrec.training.pyfunc import TopKRecommender

mlflow.models.set_model(TopKRecommender())
