"""Airflow DAG: the nightly incremental facebeam run, as a pod of the facebeam image.

Drop this file into the DAGs folder of an Airflow 3.x (or 2.10+) deployment that has
apache-airflow-providers-cncf-kubernetes and can start pods in the `facebeam` namespace.
The pod is the same launcher as deploy/schedule/cronjob.yaml: it submits
`facebeam run --incremental` to the Flink session cluster and waits for it. Use this DAG
or the CronJob, not both.

Settings are read from the scheduler's environment at parse time (no Airflow Variables,
so parsing touches no database): FACEBEAM_IMAGE, FACEBEAM_NAMESPACE, FACEBEAM_INDEX,
FACEBEAM_FLINK_MASTER. The Elasticsearch password comes from the Kubernetes secret
facebeam-es-user (deploy/elasticsearch/eck.yaml) straight into the pod; Airflow never
sees it.

Only Airflow itself is imported here; facebeam, Beam and deepface run inside the pod.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.10+
    from airflow import DAG

IMAGE = os.environ.get("FACEBEAM_IMAGE", "REGISTRY/facebeam:0.1.0")
NAMESPACE = os.environ.get("FACEBEAM_NAMESPACE", "facebeam")
INDEX = os.environ.get("FACEBEAM_INDEX", "faces")
FLINK_MASTER = os.environ.get("FACEBEAM_FLINK_MASTER", f"facebeam-flink-rest.{NAMESPACE}.svc:8081")
ES_URL = f"https://facebeam-es-http.{NAMESPACE}.svc:9200"
ES_SECRET = "facebeam-es-user"

FACEBEAM_ARGS = [
    "run",
    "--incremental",
    "--input", "/data/photos/**",
    "--output", "/data/shards",
    "--index", INDEX,
    "--es-url", ES_URL,
    "--es-ca-certs", "/etc/facebeam/es-ca/ca.crt",
    "--runner=FlinkRunner",
    f"--flink_master={FLINK_MASTER}",
    "--flink_version=1.19",
    "--flink_submit_uber_jar",
    "--flink_job_server_jar=/opt/facebeam/jars/beam-runners-flink-1.19-job-server-2.77.0.jar",
    "--environment_type=EXTERNAL",
    "--environment_config=localhost:50000",
    "--parallelism=4",
]


def _secret_env(name: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ES_SECRET, "key": key}}}


# Merged by the provider with the operator's own container (the first container, "base").
POD_TEMPLATE = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"labels": {"app.kubernetes.io/part-of": "facebeam"}},
    "spec": {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "base",
                "env": [
                    _secret_env("FACEBEAM_ES_USER", "username"),
                    _secret_env("FACEBEAM_ES_PASSWORD", "password"),
                ],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
                "volumeMounts": [
                    {"name": "facebeam-data", "mountPath": "/data"},
                    {"name": "es-ca", "mountPath": "/etc/facebeam/es-ca", "readOnly": True},
                ],
            }
        ],
        "volumes": [
            {"name": "facebeam-data", "persistentVolumeClaim": {"claimName": "facebeam-data"}},
            {
                "name": "es-ca",
                "secret": {
                    "secretName": "facebeam-es-http-certs-public",
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                },
            },
        ],
    },
}

with DAG(
    dag_id="facebeam_nightly",
    description="Nightly incremental facebeam run: new photos -> face embeddings -> Elasticsearch",
    schedule="30 2 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args={"owner": "facebeam", "retries": 0},
    tags=["facebeam"],
) as dag:
    KubernetesPodOperator(
        task_id="facebeam_incremental_run",
        name="facebeam-nightly",
        namespace=NAMESPACE,
        image=IMAGE,
        cmds=["facebeam"],
        arguments=FACEBEAM_ARGS,
        pod_template_dict=POD_TEMPLATE,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=600,
        execution_timeout=timedelta(hours=11),
    )
