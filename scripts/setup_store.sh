#!/usr/bin/env bash
# What the object-store tests need besides the environment of setup.sh, cached outside the repository
# (XDREC_CACHE, default ~/.cache/xdrec). Idempotent: with a warm cache it only checks and returns.
#   bin/weed-<version>   SeaweedFS (Apache-2.0), an S3-compatible server, built from the Go module proxy
#   jars/s3a-hadoop-<version>/   Hadoop's s3a:// file system with the AWS SDK bundle it was built against, for
#                                the Hadoop each stack's pyspark bundles (xdrec.spark.s3a_jars picks its own)
# Prints the weed binary's path on the last line of stdout.
set -euo pipefail

cache="${XDREC_CACHE:-$HOME/.cache/xdrec}"
seaweedfs_version=v0.0.0-20261109003541-7506e5f91cd6
# Hadoop (its hadoop-client-api in pyspark/jars) and the AWS SDK bundle its hadoop-aws was built against:
# pyspark 4.0 (the main stack), pyspark 4.1 (the torch_distributor stack; its bundle shades netty).
s3a_pairs="3.4.1:2.24.6 3.4.2:2.29.52"
mkdir -p "$cache/bin" "$cache/jars"
log() { echo "[setup-store] $*" >&2; }

weed="$cache/bin/weed-$seaweedfs_version"
if [ ! -x "$weed" ]; then
  command -v go >/dev/null || { echo "setup-store: go not found (the tests build SeaweedFS with it)" >&2; exit 1; }
  start=$(date +%s)
  log "building SeaweedFS $seaweedfs_version (several minutes on 2 cores, once)"
  build=$(mktemp -d)
  # Its go.mod has replace directives, so `go install module@version` refuses it: build it as the main module.
  source=$(cd "$build" && go mod download -json "github.com/seaweedfs/seaweedfs@$seaweedfs_version" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp -r "$source" "$build/src" && chmod -R u+w "$build/src"
  (cd "$build/src" && go build -o "$build/weed" ./weed)
  mv "$build/weed" "$weed"
  rm -rf "$build"
  log "SeaweedFS built in $(( $(date +%s) - start ))s"
fi

for pair in $s3a_pairs; do
  hadoop_version=${pair%%:*} aws_sdk_version=${pair##*:}
  folder="$cache/jars/s3a-hadoop-$hadoop_version"
  mkdir -p "$folder"
  for artifact in org.apache.hadoop:hadoop-aws:$hadoop_version software.amazon.awssdk:bundle:$aws_sdk_version; do
    name=$(echo "$artifact" | cut -d: -f2)-$(echo "$artifact" | cut -d: -f3).jar
    if [ -f "$cache/jars/$name" ]; then
      mv "$cache/jars/$name" "$folder/"   # where caches from before the second stack kept them
    elif [ ! -f "$folder/$name" ]; then
      log "fetching $artifact from Maven Central"
      mvn -B -q -Dstyle.color=never dependency:copy -Dartifact="$artifact" -DoutputDirectory="$folder" 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g' >&2
    fi
  done
done

echo "$weed"
