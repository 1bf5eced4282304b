#!/usr/bin/env bash
# The stages up to gold on a Spark standalone cluster, through spark-submit. The label audit among them trains
# its out-of-fold models on Ray: set ray.address (--set ray.address=http://HEAD:8265) to run them on a Ray
# cluster, or --set audit.enabled=false for the Spark stages alone.
#
#   infra/spark/standalone.sh spark://MASTER:7077 CONFIG [fulcrum run flags...]
#
# `python -m jobs.lakehouse.session submit-args` prints the options that make it work on any cluster manager:
#   --packages io.delta:delta-spark_<spark>_2.13:<version>   Delta's jars: Spark resolves them from Maven
#       Central (or the mirror in spark.jars.ivySettings) and ships them to every executor;
#   --conf spark.sql.extensions=... / spark.sql.catalog.spark_catalog=...   the Delta session;
#   --conf spark.pyspark.python=...   executors run the same interpreter (same path on every node: the image);
# and the application file (jobs/lakehouse/submit.py, fulcrum's CLI).
# Offline clusters: set spark.jars in the config to local delta-spark and delta-storage jars instead.
#
# A local cluster to try it on (from the installed pyspark):
#   SPARK_HOME=$(python -c 'import pyspark,os;print(os.path.dirname(pyspark.__file__))')
#   $SPARK_HOME/bin/spark-class org.apache.spark.deploy.master.Master --host 127.0.0.1 --port 7077 &
#   $SPARK_HOME/bin/spark-class org.apache.spark.deploy.worker.Worker spark://127.0.0.1:7077 --cores 2 --memory 4g &
set -euo pipefail
MASTER=${1:?usage: standalone.sh spark://HOST:7077 CONFIG [flags]}
CONFIG=${2:?usage: standalone.sh spark://HOST:7077 CONFIG [flags]}
shift 2
# shellcheck disable=SC2046  # the options are meant to split
exec spark-submit --master "$MASTER" --deploy-mode client \
  --driver-memory "${DRIVER_MEMORY:-2g}" --executor-memory "${EXECUTOR_MEMORY:-4g}" \
  $(python -m jobs.lakehouse.session submit-args) run "$CONFIG" --until oversample "$@"
