"""xdrec: cross-domain recommendation at Spark scale.

The pinned runtime stack is installed by scripts/setup.sh (horovod needs a patched build and
petastorm a --no-deps install, which install_requires cannot express); install_requires names
only what the package imports directly, without pins.
"""
from setuptools import find_packages, setup

setup(
    name="xdrec",
    version="0.1.0",
    description="Cross-domain recommender: Delta feature tables, Horovod transfer training, Spark UDF scoring",
    # The named configs (conf/) ship inside the package as xdrec/conf, so an installed wheel loads them.
    package_dir={"": "lib", "xdrec.conf": "conf"},
    packages=[*find_packages("lib"), "xdrec.conf"],
    package_data={"xdrec": ["log4j2.properties"], "xdrec.conf": ["*.yaml"]},
    python_requires=">=3.10",
    install_requires=["pyspark", "delta-spark", "torch", "pyyaml", "pydantic>=2.7", "optuna", "pandas", "numpy", "scipy",
                      "pyarrow"],
    entry_points={"console_scripts": ["xdrec = xdrec.cli:main"]},
)
