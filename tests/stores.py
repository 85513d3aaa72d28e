"""Real servers the tests start: an S3-compatible store (SeaweedFS) and the ports they listen on."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid

import pytest


def free_port() -> int:
    """A free port whose gRPC companion (SeaweedFS listens on port + 10000 too) is free as well."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 55000:
            with socket.socket() as companion:
                try:
                    companion.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


class SeaweedStore:
    """A real S3-compatible server: SeaweedFS's master, volume, filer and S3 gateway in one ``weed server``
    process, on free local ports, keeping its data in ``folder`` so that it can be killed and started again."""

    def __init__(self, weed: str, folder):
        self.weed, self.folder = weed, folder
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.process = None

    def start(self, timeout: float = 120) -> None:
        import fsspec

        ports = self.ports
        self.process = subprocess.Popen(
            [self.weed, "server", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
             f"-s3.port={ports['s3']}", "-volume.max=0", "-master.volumeSizeLimitMB=64"],
            stdout=open(self.folder / "weed.log", "a"), stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:  # ready when a bucket can be made and written
            try:
                store = fsspec.filesystem("s3", skip_instance_cache=True)
                if not store.exists("ready"):
                    store.mkdir("ready")
                store.pipe_file("ready/probe", b"ok")
                return
            except Exception:  # noqa: BLE001 - not up yet
                if self.process.poll() is not None or time.time() > deadline:
                    pytest.fail(f"SeaweedFS did not start: see {self.folder / 'weed.log'}")
                time.sleep(1)

    def kill(self) -> None:
        """What a crashed store does: stop answering at once, mid-request."""
        self.process.kill()
        self.process.wait(timeout=30)


def s3a_settings(endpoint: str) -> dict[str, str]:
    """Hadoop's settings for the store at ``endpoint``, with the keys in the environment: the
    ``spark.hadoop.fs.s3a.*`` a cluster or a notebook's session is given."""
    settings = {"endpoint": endpoint, "path.style.access": "true", "connection.ssl.enabled": "false",
                "access.key": os.environ["AWS_ACCESS_KEY_ID"], "secret.key": os.environ["AWS_SECRET_ACCESS_KEY"],
                "endpoint.region": "us-east-1"}
    return {f"spark.hadoop.fs.s3a.{key}": value for key, value in settings.items()}


def new_bucket() -> str:
    """A new, empty bucket on the store the environment names (AWS_ENDPOINT_URL); returns its name."""
    import fsspec

    name = f"xdrec-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return name


def point_spark_at(spark, endpoint: str) -> None:
    """What a cluster gets with --conf spark.hadoop.fs.s3a.* and spark.executorEnv.AWS_*, on a running
    session: Spark's s3a settings, and the store's environment for the Python workers."""
    settings = {**s3a_settings(endpoint), "spark.hadoop.fs.s3a.attempts.maximum": "2",
                "spark.hadoop.fs.s3a.retry.limit": "2"}
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in settings.items():
        hadoop.set(key[len("spark.hadoop."):], value)
        spark.conf.set(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        spark.sparkContext.environment[key] = os.environ[key]
