"""Configuration loading and validation, and the command line's one-line errors."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xdrec.cli import guarded, run_job
from xdrec.config import CONF_DIR, Config, load_config
from xdrec.errors import XdrecError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(path.stem for path in CONF_DIR.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    config = load_config(name)
    assert config.data.source_domain in config.data.domains
    assert config.data.target_domain in config.data.domains


def test_the_template_for_new_data_keeps_every_default_but_the_data_and_warehouse():
    # A new dataset starts from it: no setting fitted to another dataset may ride along.
    template = load_config("template")
    changed = {name for name, field in Config.model_fields.items()
               if getattr(template, name) != field.get_default(call_default_factory=True)}
    assert changed == {"warehouse", "data"}
    assert template.data.fetch == "none" and template.data.target_domain in template.data.domains


def test_overrides_are_typed():
    config = load_config("synthetic", ["train.batch_size=64", "train.methods=[target_only]",
                                       "score.exclude_seen=false", "features.seed=5", "train.temperature=0.2",
                                       "evaluate.ks=1,5"])
    assert config.train.batch_size == 64
    assert config.train.methods == ["target_only"]
    assert config.train.temperature == [0.2] and config.evaluate.ks == [1, 5]  # one value: a list of one
    assert config.score.exclude_seen is False
    assert config.features.seed == 5


def test_only_true_and_false_are_booleans(tmp_path):
    # YAML 1.1 reads off, on, yes and no as booleans too; a setting whose choices include "off" would then
    # get false.
    assert load_config("synthetic", ["train.item_text=off"]).train.item_text == "off"
    path = tmp_path / "mine.yaml"
    path.write_text((CONF_DIR / "synthetic.yaml").read_text().replace("train:\n", "train:\n  item_text: off\n", 1))
    assert load_config(str(path)).train.item_text == "off"
    with pytest.raises(XdrecError, match="'score.exclude_seen'"):
        load_config("synthetic", ["score.exclude_seen=yes"])


def test_raw_placeholder_expands_under_the_warehouse(tmp_path):
    config = load_config("synthetic", [f"warehouse={tmp_path}"])
    assert config.domain_input("movies").interactions == f"{tmp_path}/raw/synthetic/movies/interactions.csv"


@pytest.mark.parametrize("override, named", [
    ("train.epochz=3", "'train.epochz'"),
    ("train.batch_size=big", "'train.batch_size'"),
    ("train.methods=[magic]", "magic"),
    ("features.test_ratio=1.5", "features.test_ratio"),
    ("data.domains.movies.format=xlsx", "data.domains.movies.format"),
    ("score.exclude_seen=maybe", "'score.exclude_seen'"),
    ("train.temperature=[]", "'train.temperature' must be a non-empty list"),
])
def test_bad_keys_are_named(override, named):
    with pytest.raises(XdrecError) as error:
        load_config("synthetic", [override])
    message = str(error.value)
    assert named in message and "synthetic.yaml" in message
    assert "\n" not in message


def test_bad_key_in_a_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text((CONF_DIR / "synthetic.yaml").read_text().replace("  k: 10\n", "  kk: 10\n", 1))
    with pytest.raises(XdrecError, match=r"mine\.yaml: unknown key 'score\.kk'"):
        load_config(str(path))


def test_missing_config_file():
    with pytest.raises(XdrecError, match="config file not found: .*nope.yaml"):
        load_config("nope")


@pytest.mark.parametrize("argv, expected", [
    (["launch"], "unknown stage 'launch'"),
    (["ingest", "--conf", "nope"], "config file not found"),
    (["ingest", "--set", "train.epochz=1"], "unknown key 'train.epochz'"),
    (["ingest", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_user_errors_are_one_line_with_exit_code_2(argv, expected, capsys):
    assert run_job(argv=argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xdrec: error:") and expected in err


def test_job_file_reports_missing_input_in_one_line(tmp_path):
    """A real process, as spark-submit would start it: a missing input file, no Java stack trace."""
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "ingest.py"), "--conf", "synthetic", "--set", f"warehouse={tmp_path}",
         "--set", "data.fetch=none"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("xdrec:")]
    assert len(lines) == 1 and "interactions.csv" in lines[0], result.stderr
    assert "at org.apache" not in result.stderr and "Traceback" not in result.stderr


def test_a_jvm_failure_names_its_root_cause_in_one_line_and_logs_the_trace(spark, tmp_path, monkeypatch, capsys):
    """A Py4JJavaError's own first line ("An error occurred while calling o66.collectToPython.") says
    nothing; the line must carry the Java exception and its innermost cause, the trace goes to a file."""
    monkeypatch.setenv("XDREC_LOG_DIR", str(tmp_path / "logs"))
    folder = tmp_path / "table"
    spark.range(10).coalesce(1).write.parquet(str(folder))
    part = next(folder.glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:4] + b"x" * 64)  # cut: no footer
    (folder / f".{part.name}.crc").unlink(missing_ok=True)

    assert guarded(lambda: spark.read.schema("id long").parquet(str(folder)).collect()) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xdrec: Spark error:"), err
    assert "An error occurred while calling" not in err and "root cause:" in err and part.name in err, err
    trace = err.split("full trace: ")[1].rstrip(")\n")
    assert "Py4JJavaError" in open(trace).read()


@pytest.mark.parametrize("override, expected", [
    ("data.name=../../../../elsewhere", "key 'data.name' must be a plain folder name"),
    ("data.name=a/b", "key 'data.name' must be a plain folder name"),
    ("warehouse=/", "key 'warehouse' must be a folder, not a filesystem root"),
])
def test_config_cannot_point_the_stages_outside_a_warehouse_folder(override, expected):
    with pytest.raises(XdrecError, match=expected):
        load_config("synthetic", [override])


def test_the_tests_run_this_checkouts_code():
    """setup.sh gives each checkout its own .venv over the shared packages, so another checkout's setup
    cannot point this one's environment at its own code (it used to re-point a shared editable install)."""
    import xdrec

    assert Path(xdrec.__file__).resolve().parent == REPO / "lib" / "xdrec"


def test_an_installed_wheel_loads_the_named_configs(tmp_path):
    """The wheel ships conf/ as xdrec/conf: `--conf demo` works without a source checkout."""
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    shutil.copy(REPO / "setup.py", source)
    for folder in ("lib", "conf"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path, timeout=300)
    wheel = next((tmp_path / "dist").glob("xdrec-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, timeout=300)
    shown = subprocess.run(
        [sys.executable, "-c", "import xdrec, xdrec.config as c; print(xdrec.__file__); "
                               "print(c.load_config('demo').data.name, c.load_config('cdrib_video_game').data.name)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert shown.returncode == 0, shown.stderr
    location, names = shown.stdout.splitlines()
    assert location.startswith(str(tmp_path / "site")) and names == "movielens-1m cdrib-video-game"


def test_a_long_spark_step_reports_its_progress(spark, capsys):
    from pyspark.sql import functions as F

    from xdrec.spark import progress

    @F.udf("long")
    def slowly(value):
        time.sleep(0.5)
        return value

    with progress(spark, "score", "scoring a test", every_seconds=0.2):
        # collect, not count: a count would let Spark prune the slow column away.
        rows = spark.range(0, 8, numPartitions=4).select(slowly("id").alias("value")).collect()
    assert sorted(row.value for row in rows) == list(range(8))
    lines = [line for line in capsys.readouterr().out.splitlines() if "[score] scoring a test: " in line]
    assert any(" of 4 tasks done, " in line for line in lines), lines  # the stage of the 4 slow tasks
    assert all(re.search(r"scoring a test: \d+ of \d+ tasks done, \d+s$", line) for line in lines), lines
