#!/usr/bin/env bash
# facebeam on Google Cloud Dataproc (managed Spark on YARN), image 2.2 (Spark 3.5).
#
# What works for Beam Python here, and what this script does:
#   * A Dataproc *cluster* (not Dataproc Serverless): Serverless Spark batches have no
#     Docker daemon and no way to run Beam's SDK harness next to the executors.
#   * Beam's portable Spark runner as one self-contained jar (--output_executable_path),
#     run by `gcloud dataproc jobs submit spark` with SparkPipelineRunner as main class.
#   * SDK harness: a Beam worker pool container (the facebeam image, `--worker_pool`) on
#     every node, started by an initialization action, reached by executors at
#     localhost:50000 (--environment_type=EXTERNAL). The Elasticsearch password comes
#     from Secret Manager into a root-only env file on each node; it is never a flag.
#   * Photos and shards live in GCS, so the image must be built with Beam's GCP extra:
#       docker build -f deploy/docker/Dockerfile --build-arg EXTRA_PIP="apache-beam[gcp]==2.77.0" \
#         -t "$IMAGE" . && docker push "$IMAGE"
#
# Usage: PROJECT=... REGION=... BUCKET=... IMAGE=... ES_URL=... deploy/spark/dataproc.sh STEP
#   STEP = cluster   create the cluster (once)
#          run [facebeam run flags...]   build the pipeline jar on the master and submit it
#          delete    delete the cluster
#          init-action   print the node initialization action (for review)
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

PROJECT="${PROJECT:-my-project}"
REGION="${REGION:-europe-west1}"
ZONE="${ZONE:-${REGION}-b}"
CLUSTER="${CLUSTER:-facebeam}"
BUCKET="${BUCKET:-my-facebeam-bucket}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/facebeam/facebeam:0.1.0}"
ES_SECRET="${ES_SECRET:-facebeam-es-password}"   # Secret Manager secret holding the password
ES_USER="${ES_USER:-facebeam}"
ES_URL="${ES_URL:-https://es.example.internal:9200}"
ES_CA_CERTS="${ES_CA_CERTS:-/etc/facebeam/es-ca.crt}"   # inside the containers; see init action
ES_CA_GCS="${ES_CA_GCS:-gs://${BUCKET}/facebeam/es-ca.crt}"
WORKERS="${WORKERS:-4}"
WORKER_TYPE="${WORKER_TYPE:-n2-standard-8}"
INPUT="${FACEBEAM_INPUT:-gs://${BUCKET}/photos/**}"
OUTPUT="${FACEBEAM_OUTPUT:-gs://${BUCKET}/shards}"
INDEX="${FACEBEAM_INDEX:-faces}"
JOB_SERVER_JAR=/opt/facebeam/jars/beam-runners-spark-3-job-server-2.77.0.jar

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# Initialization action, run as root on every node when it is created.
init_action() {
  cat <<'INIT'
#!/bin/bash
set -euxo pipefail
meta() { /usr/share/google/get_metadata_value "attributes/$1"; }
image="$(meta facebeam-image)"
registry="${image%%/*}"
install -d -m 0700 /etc/facebeam
gcloud auth configure-docker "$registry" --quiet
gsutil cp "$(meta facebeam-es-ca)" /etc/facebeam/es-ca.crt
umask 077
{
  echo "FACEBEAM_ES_USER=$(meta facebeam-es-user)"
  echo "FACEBEAM_ES_PASSWORD=$(gcloud secrets versions access latest --secret="$(meta facebeam-es-secret)")"
} > /etc/facebeam/es.env
docker pull "$image"
docker run -d --name beam-worker-pool --restart=always --network=host \
  --env-file /etc/facebeam/es.env -v /etc/facebeam/es-ca.crt:/etc/facebeam/es-ca.crt:ro \
  "$image" --worker_pool
INIT
}

step="${1:-}"
shift || true
case "$step" in
  cluster)
    init_file="$(mktemp)"
    init_action >"$init_file"
    run gsutil cp "$init_file" "gs://${BUCKET}/facebeam/init-worker-pool.sh"
    run gcloud dataproc clusters create "$CLUSTER" \
      --project="$PROJECT" --region="$REGION" --zone="$ZONE" \
      --image-version=2.2-debian12 \
      --optional-components=DOCKER \
      --enable-component-gateway \
      --num-workers="$WORKERS" --worker-machine-type="$WORKER_TYPE" \
      --scopes=cloud-platform \
      --initialization-actions="gs://${BUCKET}/facebeam/init-worker-pool.sh" \
      --metadata="facebeam-image=${IMAGE},facebeam-es-secret=${ES_SECRET},facebeam-es-user=${ES_USER},facebeam-es-ca=${ES_CA_GCS}"
    rm -f "$init_file"
    ;;
  run)
    jar_name="facebeam-pipeline-$(date -u +%Y%m%dT%H%M%SZ).jar"
    read -r -a inputs <<<"$INPUT"
    # On the master: the image (with Java and the Spark job server jar) writes the jar.
    build=(sudo docker run --rm --network=host
      --env-file /etc/facebeam/es.env
      -v /etc/facebeam/es-ca.crt:/etc/facebeam/es-ca.crt:ro
      -v /tmp/facebeam-jars:/out
      --entrypoint facebeam "$IMAGE"
      run --input "${inputs[@]}" --output "$OUTPUT" --index "$INDEX"
      --es-url "$ES_URL" --es-ca-certs "$ES_CA_CERTS" "$@"
      --runner=SparkRunner --spark_version=3 --spark_job_server_jar="$JOB_SERVER_JAR"
      --environment_type=EXTERNAL --environment_config=localhost:50000
      --output_executable_path="/out/${jar_name}")
    copy=(gsutil cp "/tmp/facebeam-jars/${jar_name}" "gs://${BUCKET}/facebeam/jars/${jar_name}")
    run gcloud compute ssh "${CLUSTER}-m" --project="$PROJECT" \
      --zone="$ZONE" \
      --command="$(printf '%q ' "${build[@]}") && $(printf '%q ' "${copy[@]}")"
    run gcloud dataproc jobs submit spark \
      --project="$PROJECT" --region="$REGION" --cluster="$CLUSTER" \
      --class=org.apache.beam.runners.spark.SparkPipelineRunner \
      --jars="gs://${BUCKET}/facebeam/jars/${jar_name}"
    ;;
  init-action)
    init_action
    ;;
  delete)
    run gcloud dataproc clusters delete "$CLUSTER" --project="$PROJECT" --region="$REGION" --quiet
    ;;
  *)
    echo "usage: $0 cluster | run [facebeam run flags...] | delete | init-action" >&2
    exit 2
    ;;
esac
