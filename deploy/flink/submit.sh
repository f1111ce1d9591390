#!/usr/bin/env bash
# Submit one facebeam job to the Flink session cluster of deploy/flink/flinkdeployment.yaml.
#
# Run it where `facebeam` is installed and the shared volume is mounted at /data, e.g. in
# a pod of the facebeam image (it has Java and the Beam job-server jar):
#   kubectl -n facebeam apply -f deploy/schedule/cronjob.yaml      # then, for a one-off run:
#   kubectl -n facebeam create job facebeam-manual-$(date +%s) --from=cronjob/facebeam-nightly
# or interactively inside such a pod:
#   FACEBEAM_ES_PASSWORD=... deploy/flink/submit.sh --incremental
#
# Extra arguments go to `facebeam run` (e.g. --incremental, --since 2026-01-01, Beam flags).
# SUBMIT_MODE=jobserver (default): Beam's Flink job server runs here (java -jar), stages the
#   job's artifacts in BEAM_ARTIFACTS_DIR (must be on the volume the task managers mount)
#   and submits through the JobManager's REST port.
# SUBMIT_MODE=uberjar: no local JVM; Beam builds one jar (job server + pipeline + artifacts)
#   and uploads it to the JobManager's REST API (--flink_submit_uber_jar).
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

FLINK_MASTER="${FLINK_MASTER:-facebeam-flink-rest.facebeam.svc:8081}"   # <FlinkDeployment name>-rest
FLINK_VERSION="${FLINK_VERSION:-1.19}"                                  # = spec.flinkVersion v1_19
FLINK_JOB_SERVER_JAR="${FACEBEAM_FLINK_JOB_SERVER_JAR:-/opt/facebeam/jars/beam-runners-flink-${FLINK_VERSION}-job-server-2.77.0.jar}"
SUBMIT_MODE="${SUBMIT_MODE:-jobserver}"
BEAM_ARTIFACTS_DIR="${BEAM_ARTIFACTS_DIR:-/data/beam-artifacts}"
PARALLELISM="${PARALLELISM:-4}"            # <= task managers x taskmanager.numberOfTaskSlots

INPUT="${FACEBEAM_INPUT:-/data/photos/**}" # space-separated patterns; not globbed here
OUTPUT="${FACEBEAM_OUTPUT:-/data/shards}"
INDEX="${FACEBEAM_INDEX:-faces}"
ES_URL="${FACEBEAM_ES_URL:-https://facebeam-es-http.facebeam.svc:9200}"
ES_CA_CERTS="${FACEBEAM_ES_CA_CERTS:-/etc/facebeam/es-ca/ca.crt}"

if [[ "${DRY_RUN:-0}" != 1 ]]; then
  : "${FACEBEAM_ES_PASSWORD:?set FACEBEAM_ES_PASSWORD (and FACEBEAM_ES_USER); it is never a flag}"
fi

read -r -a inputs <<<"$INPUT"

beam_flags=(
  --runner=FlinkRunner
  --flink_master="$FLINK_MASTER"
  --flink_version="$FLINK_VERSION"
  --flink_job_server_jar="$FLINK_JOB_SERVER_JAR"
  --environment_type=EXTERNAL
  --environment_config=localhost:50000   # the beam-worker-pool sidecar in each task manager pod
  --parallelism="$PARALLELISM"
)
case "$SUBMIT_MODE" in
  jobserver) beam_flags+=(--artifacts_dir="$BEAM_ARTIFACTS_DIR") ;;
  uberjar) beam_flags+=(--flink_submit_uber_jar) ;;
  *) echo "submit.sh: SUBMIT_MODE must be jobserver or uberjar, not '$SUBMIT_MODE'" >&2; exit 2 ;;
esac

cmd=(facebeam run
  --input "${inputs[@]}"
  --output "$OUTPUT"
  --index "$INDEX"
  --es-url "$ES_URL"
  --es-ca-certs "$ES_CA_CERTS"
  "$@"
  "${beam_flags[@]}")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
