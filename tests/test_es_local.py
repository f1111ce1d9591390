"""The local Elasticsearch tooling against a real server: TLS, credentials, status, errors, stop."""
import argparse
import dataclasses
import json
import logging
import os
import pickle
import secrets
import shutil
import socket
import ssl
import stat
import time
import traceback
import urllib.error
import urllib.request

import psutil
import pytest

from facebeam.pipelines import options
from facebeam.pipelines.local import elasticsearch as es_local
from facebeam.transforms.es_conn import EsAuthError, EsConfigError, EsConnection, EsUnavailable
from tests.es_fixtures import CACHE, extra_cluster_slot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_secured_cluster_answers_https_with_its_ca(es_conn, es_home):
    assert es_conn.url.startswith("https://127.0.0.1:")
    assert es_conn.verify_certs and es_conn.username and es_conn.password
    health = es_conn.check()
    assert health["status"] in ("yellow", "green")
    # The connection file holds the password: owner-only.
    assert stat.S_IMODE((es_home / "connection.json").stat().st_mode) == 0o600
    url = f"{es_conn.url}/_cluster/health"
    # Real TLS: without the CA the certificate does not verify ...
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context())  # noqa: S310 - https to the local node
    # ... and with it, an anonymous request is refused.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context(cafile=es_conn.ca_certs))  # noqa: S310
    assert err.value.code == 401


def test_status_json_counts_the_index_and_alias(es_conn, es_client, es_home, es_index, capsys):
    es_client.bulk(operations=[{"index": {"_index": es_index, "_id": "a"}}, {"n": 1},
                               {"index": {"_index": es_index, "_id": "b"}}, {"n": 2}], refresh="wait_for")
    es_client.indices.put_alias(index=es_index, name=f"{es_index}-alias")
    for name in (es_index, f"{es_index}-alias"):
        assert es_local.main(["status", "--home", str(es_home), "--index", name, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["count"] == 2
        assert out["health"] in ("yellow", "green")
    assert es_local.main(["status", "--home", str(es_home), "--index", f"{es_index}-missing", "--json"]) == 1
    assert "not found" in capsys.readouterr().err


def test_wrong_password_is_a_clear_auth_error_without_the_secret(es_conn, caplog, capsys):
    secret = "wrong-" + secrets.token_hex(8)
    bad = dataclasses.replace(es_conn, password=secret)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EsAuthError) as err:
        bad.check()
    message = str(err.value)
    assert f"authentication failed for user '{es_conn.username}' at {es_conn.url}" in message
    shown = [message, repr(err.value), "".join(traceback.format_exception(err.value)), repr(bad), str(bad),
             caplog.text, *capsys.readouterr()]
    for text in shown:
        assert secret not in text
        assert es_conn.password not in text


def test_connection_repr_redacts_and_pickles(es_conn):
    keyed = EsConnection(hosts=("https://h:9200",), api_key="k-" + secrets.token_hex(8))
    for conn in (es_conn, keyed):
        assert "***" in repr(conn)
        assert (conn.password or conn.api_key) not in repr(conn) + str(conn)
        assert pickle.loads(pickle.dumps(conn)) == conn


def test_secrets_from_env_or_file_travel_as_references(es_conn, tmp_path, monkeypatch):
    """A pickled connection (what Beam ships to workers) holds where the secret is, never the secret."""
    from apache_beam.internal.cloudpickle import cloudpickle  # Beam's default pickler

    for var in ("URL", "USER", "PASSWORD", "API_KEY", "CA_CERTS", "CONN"):
        monkeypatch.delenv(f"FACEBEAM_ES_{var}", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACEBEAM_ES_URL", es_conn.url)
    monkeypatch.setenv("FACEBEAM_ES_USER", es_conn.username)
    monkeypatch.setenv("FACEBEAM_ES_PASSWORD", es_conn.password)
    monkeypatch.setenv("FACEBEAM_ES_CA_CERTS", es_conn.ca_certs)
    conn = EsConnection.resolve()
    assert conn.secret_ref == "env:FACEBEAM_ES_PASSWORD"
    for dumps in (pickle.dumps, cloudpickle.dumps):
        blob = dumps(conn)
        assert es_conn.password.encode() not in blob
        worker = pickle.loads(blob)
        assert worker == conn and worker.check()["cluster_name"]
    monkeypatch.delenv("FACEBEAM_ES_PASSWORD")
    orphan = pickle.loads(blob)  # a worker without the variable: a clear error, no secret, no request
    with pytest.raises(EsConfigError, match="set FACEBEAM_ES_PASSWORD in this worker's environment"):
        orphan.client()

    for var in ("URL", "USER", "CA_CERTS"):
        monkeypatch.delenv(f"FACEBEAM_ES_{var}")
    conn_file = tmp_path / "connection.json"
    conn_file.write_text(json.dumps({"url": es_conn.url, "username": es_conn.username,
                                     "password": es_conn.password, "ca_certs": es_conn.ca_certs}))
    from_file = EsConnection.resolve(conn_file=conn_file)
    blob = cloudpickle.dumps(from_file)
    assert es_conn.password.encode() not in blob and str(conn_file).encode() in blob
    assert pickle.loads(blob).check()["cluster_name"]
    # Given explicitly (as the fixtures do), a secret has nowhere else to come from: it is pickled.
    assert pickle.loads(pickle.dumps(es_conn)).password == es_conn.password


def test_unreachable_url_fails_fast():
    url = f"https://127.0.0.1:{_free_port()}"
    conn = EsConnection(hosts=(url,), username="u", password="p-" + secrets.token_hex(4))
    t0 = time.monotonic()
    with pytest.raises(EsUnavailable, match=f"Elasticsearch at {url} is unreachable"):
        conn.check(timeout=3)
    assert time.monotonic() - t0 < 5


def test_port_in_use_is_refused_clearly(es_conn):
    port = int(es_conn.url.rsplit(":", 1)[1])
    with pytest.raises(es_local.EsLocalError, match=f"port {port} on 127.0.0.1 is in use"):
        es_local.check_ports_free([port])


def test_resolve_precedence_and_flags(tmp_path, monkeypatch, caplog):
    for var in ("URL", "USER", "PASSWORD", "API_KEY", "CA_CERTS", "CONN"):
        monkeypatch.delenv(f"FACEBEAM_ES_{var}", raising=False)
    monkeypatch.chdir(tmp_path)  # no default connection file here
    with pytest.raises(EsConfigError, match="no Elasticsearch URL"):
        EsConnection.resolve()
    conn_file = tmp_path / "c.json"
    conn_file.write_text(json.dumps({"url": "https://127.0.0.1:1", "hosts": ["https://127.0.0.1:1"],
                                     "username": "fileuser", "password": "filepw", "ca_certs": None}))
    assert EsConnection.resolve(conn_file=conn_file).username == "fileuser"
    monkeypatch.setenv("FACEBEAM_ES_CONN", str(conn_file))
    monkeypatch.setenv("FACEBEAM_ES_URL", "http://envhost:9200")
    c = EsConnection.resolve()
    assert (c.hosts, c.username, c.password) == (("http://envhost:9200",), "fileuser", "filepw")
    c = EsConnection.resolve(url="https://argue:9201,https://argue:9202")
    assert c.hosts == ("https://argue:9201", "https://argue:9202") and c.verify_certs
    # Credentials inside a URL are taken out of it and never shown.
    c = EsConnection.resolve(url="https://bob:s3cr3t@host:9200")
    assert (c.hosts, c.username, c.password) == (("https://host:9200",), "bob", "s3cr3t")
    assert "s3cr3t" not in repr(c)
    # An API key from the environment beats the file's user/password.
    monkeypatch.setenv("FACEBEAM_ES_API_KEY", "envkey")
    c = EsConnection.resolve()
    assert (c.api_key, c.username, c.password) == ("envkey", None, None)
    # Command-line flags: no password flag; --es-insecure is the only way off, and it warns.
    parser = argparse.ArgumentParser()
    options.add_es(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--es-password", "x"])
    with caplog.at_level(logging.WARNING):
        c = options.es_from(options.Args(parser.parse_args(["--es-url", "https://h:1", "--es-insecure"]))).connection()
    assert not c.verify_certs and "verification is OFF" in caplog.text


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_cli_up_setting_no_security_and_down(monkeypatch, capsys):
    monkeypatch.setenv(es_local.ENV_CACHE, str(CACHE))
    with extra_cluster_slot(nodes=1) as (home, port):
        argv = ["--home", str(home)]
        assert es_local.main(["up", *argv, "--port", str(port), "--no-security",
                              "--setting", "thread_pool.write.queue_size=1"]) == 0
    try:
        assert "1 node(s) up" in capsys.readouterr().out
        procs = es_local.node_processes(home)
        assert [p.name for p in procs] == ["node-0"]
        conn = es_local.connection(home)
        assert conn.url == f"http://127.0.0.1:{port}" and conn.username is None
        client = conn.client()
        pools = client.cat.thread_pool(thread_pool_patterns="write", h="name,queue_size", format="json")
        client.close()
        assert pools[0]["queue_size"] == "1"
    finally:
        assert es_local.main(["down", *argv]) == 0
    out = capsys.readouterr().out
    assert f"stopped node-0 (pid {procs[0].pid}, port {port})" in out
    assert es_local.node_processes(home) == []
    # Every process of the node's group has exited. A member whose parent died first may linger as a
    # zombie until init reaps it: it holds no port, file or memory, so it counts as gone.
    left = [p for p in psutil.process_iter(["status"]) if _pgid(p.pid) == procs[0].pid]
    assert all(p.info["status"] == psutil.STATUS_ZOMBIE for p in left), left
    assert not (home / "connection.json").exists()
    es_local.check_ports_free([port])  # the port is released


def test_restart_keeps_credentials_ca_and_data():
    """A restart of the same home (after a crash or `es down`) reuses password, CA and data."""
    with extra_cluster_slot(nodes=1) as (home, port):
        es_local.stop_cluster(home)
        conn = es_local.start_cluster(home, port=port, timeout=300, fresh=True, cache=CACHE)
    try:
        creds = json.loads((home / "credentials.json").read_text())
        assert creds["password"] == conn.password
        assert stat.S_IMODE((home / "credentials.json").stat().st_mode) == 0o600
        ca = (home / "certs" / "ca.crt").read_bytes()
        client = conn.client()
        client.index(index="restart-check", id="1", document={"n": 1}, refresh="wait_for")
        client.close()
        # Hold the slot lock while the port is free, so no other session's cluster takes it.
        with extra_cluster_slot(nodes=1, port=port):
            es_local.kill_node(home, 0)  # a crash: kill -9
            again = es_local.start_cluster(home, port=port, timeout=300, cache=CACHE)
        assert (again.password, again.ca_certs) == (conn.password, conn.ca_certs)
        assert (home / "certs" / "ca.crt").read_bytes() == ca
        assert es_local.connection(home).password == conn.password
        client = conn.client()  # the connection made before the restart
        try:
            assert client.get(index="restart-check", id="1")["_source"] == {"n": 1}
        finally:
            client.close()
        with extra_cluster_slot(nodes=1, port=port):
            es_local.stop_cluster(home)  # `es down` then `es up`: same again
            third = es_local.start_cluster(home, port=port, timeout=300, cache=CACHE)
        assert third.password == conn.password
        assert conn.check()["status"] in ("yellow", "green")
    finally:
        es_local.stop_cluster(home)
        shutil.rmtree(home, ignore_errors=True)
