#!/usr/bin/env bash
# Run facebeam on a self-managed Spark 3.5 standalone cluster (spark://MASTER:7077).
#
# Every Spark worker host needs a Beam SDK worker pool on localhost:50000, started from
# the facebeam image (or a host venv with facebeam installed):
#   docker run -d --restart=always --network=host -v /data:/data \
#     -e FACEBEAM_ES_USER -e FACEBEAM_ES_PASSWORD REGISTRY/facebeam:0.1.0 --worker_pool
#   # without Docker: python -m apache_beam.runners.worker.worker_pool_main --service_port=50000
# and the same /data (photos in, shards out) mounted on every worker and here.
#
# Usage: deploy/spark/spark-submit.sh [facebeam run flags: --incremental, --since DATE, ...]
# MODE=jobserver (default): Beam's portable Spark job server runs here (java -jar) and is
#   the Spark driver (client mode); job artifacts are staged in BEAM_ARTIFACTS_DIR, which
#   must be on the shared /data so executors can serve them to the SDK workers.
# MODE=jar: build one self-contained pipeline jar (--output_executable_path; job server,
#   pipeline and artifacts inside), then hand it to spark-submit. Run it soon after it is
#   built: the list of input files is fixed when the pipeline is constructed.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

SPARK_MASTER="${SPARK_MASTER:-spark://spark-master:7077}"
SPARK_JOB_SERVER_JAR="${FACEBEAM_SPARK_JOB_SERVER_JAR:-/opt/facebeam/jars/beam-runners-spark-3-job-server-2.77.0.jar}"
MODE="${MODE:-jobserver}"
BEAM_ARTIFACTS_DIR="${BEAM_ARTIFACTS_DIR:-/data/beam-artifacts}"
PIPELINE_JAR="${PIPELINE_JAR:-/data/jars/facebeam-pipeline-$(date -u +%Y%m%dT%H%M%SZ).jar}"
SPARK_SUBMIT="${SPARK_SUBMIT:-spark-submit}"   # from a Spark 3.5.x install

INPUT="${FACEBEAM_INPUT:-/data/photos/**}"     # space-separated patterns; not globbed here
OUTPUT="${FACEBEAM_OUTPUT:-/data/shards}"
INDEX="${FACEBEAM_INDEX:-faces}"
ES_URL="${FACEBEAM_ES_URL:-https://es01:9200}"
ES_CA_CERTS="${FACEBEAM_ES_CA_CERTS:-/etc/facebeam/es-ca/ca.crt}"

if [[ "${DRY_RUN:-0}" != 1 ]]; then
  : "${FACEBEAM_ES_PASSWORD:?set FACEBEAM_ES_PASSWORD (and FACEBEAM_ES_USER); it is never a flag}"
fi

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

read -r -a inputs <<<"$INPUT"
facebeam_args=(
  --input "${inputs[@]}"
  --output "$OUTPUT"
  --index "$INDEX"
  --es-url "$ES_URL"
  --es-ca-certs "$ES_CA_CERTS"
  "$@"
)
beam_flags=(
  --runner=SparkRunner
  --spark_version=3
  --spark_job_server_jar="$SPARK_JOB_SERVER_JAR"
  --environment_type=EXTERNAL
  --environment_config=localhost:50000
)

case "$MODE" in
  jobserver)
    run facebeam run "${facebeam_args[@]}" "${beam_flags[@]}" \
      --spark_master_url="$SPARK_MASTER" --artifacts_dir="$BEAM_ARTIFACTS_DIR"
    ;;
  jar)
    run mkdir -p "$(dirname "$PIPELINE_JAR")"
    run facebeam run "${facebeam_args[@]}" "${beam_flags[@]}" \
      --output_executable_path="$PIPELINE_JAR"
    # spark-submit's --master takes precedence over the options inside the jar.
    run "$SPARK_SUBMIT" --master "$SPARK_MASTER" --deploy-mode client \
      --class org.apache.beam.runners.spark.SparkPipelineRunner \
      --conf spark.executor.cores="${EXECUTOR_CORES:-2}" \
      "$PIPELINE_JAR"
    ;;
  *)
    echo "spark-submit.sh: MODE must be jobserver or jar, not '$MODE'" >&2
    exit 2
    ;;
esac
