"""The bundle that schedules the Databricks notebooks is well formed and names only notebooks that exist.
The notebooks themselves run, cell by cell, in tests/test_pipeline_e2e.py, on the pipeline's warehouse."""
from __future__ import annotations

import os
import re

import yaml

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPOSITORY, "notebooks")
SOURCE_HEADER = "# Databricks notebook source\n"
CELL_SEPARATOR = "\n# COMMAND ----------\n"


def notebook_cells(path: str) -> list[str]:
    """The code cells of a notebook in Databricks source format (markdown cells are ``# MAGIC`` lines)."""
    with open(path) as handle:
        text = handle.read()
    assert text.startswith(SOURCE_HEADER), f"{path}: not in Databricks source format"
    cells = text[len(SOURCE_HEADER):].split(CELL_SEPARATOR)
    return [cell for cell in cells if any(line.strip() and not line.startswith("# MAGIC") for line in cell.splitlines())]


def notebook_paths() -> list[str]:
    return sorted(os.path.join(NOTEBOOKS, name) for name in os.listdir(NOTEBOOKS) if name.endswith(".py"))


def test_the_bundle_defines_the_two_scheduled_jobs_on_existing_notebooks_with_the_built_wheel():
    with open(os.path.join(REPOSITORY, "databricks.yml")) as handle:
        bundle = yaml.safe_load(handle)
    assert bundle["bundle"]["name"] == "xdrec"
    assert bundle["artifacts"]["xdrec_wheel"] == {"type": "whl", "build": "python -m build --wheel", "path": "."}
    jobs = bundle["resources"]["jobs"]
    assert set(jobs) == {"xdrec_weekly_train", "xdrec_nightly_score"}
    # Quartz: seconds minutes hours day-of-month month day-of-week; one of the two days is "?".
    assert jobs["xdrec_weekly_train"]["schedule"]["quartz_cron_expression"].split()[5] == "SUN"
    assert jobs["xdrec_nightly_score"]["schedule"]["quartz_cron_expression"].split()[3:6] == ["*", "*", "?"]
    variables = set(bundle["variables"])
    for name, job in jobs.items():
        clusters = {cluster["job_cluster_key"] for cluster in job["job_clusters"]}
        keys = [task["task_key"] for task in job["tasks"]]
        assert len(keys) == len(set(keys)), name
        for task in job["tasks"]:
            assert task["job_cluster_key"] in clusters, (name, task["task_key"])
            assert {dependency["task_key"] for dependency in task.get("depends_on", [])} <= set(keys[:keys.index(task["task_key"])])
            notebook = os.path.normpath(os.path.join(REPOSITORY, task["notebook_task"]["notebook_path"]))
            assert os.path.isfile(notebook) and notebook_cells(notebook), (name, notebook)
            assert task["libraries"] == [{"whl": "./dist/*.whl"}]
            parameters = task["notebook_task"]["base_parameters"]
            assert set(parameters) == {"conf", "overrides"}
            used = set(re.findall(r"\$\{var\.(\w+)\}", yaml.safe_dump(parameters)))
            assert used <= variables, used - variables
    training = [task["notebook_task"]["notebook_path"] for task in jobs["xdrec_weekly_train"]["tasks"]]
    assert training == [f"./notebooks/{name}.py" for name in ("02_ingest", "03_features", "04_tune", "05_train", "07_evaluate")]
    assert "train.launcher=torch_distributor" in jobs["xdrec_weekly_train"]["tasks"][0]["notebook_task"]["base_parameters"]["overrides"]
    assert "score.mode=incremental" in jobs["xdrec_nightly_score"]["tasks"][0]["notebook_task"]["base_parameters"]["overrides"]
