"""The file realm of a local cluster: one generated superuser, kept across restarts.

The password lives only in `<home>/credentials.json` (mode 0600; and the connection file);
the hashed `users` / `users_roles` are written by Elasticsearch's own `elasticsearch-users`
tool, the password going through its stdin, never its argv.
"""
import json
import logging
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from facebeam.pipelines.local.es.layout import EsLocalError
from facebeam.transforms import privacy

log = logging.getLogger(__name__)
USERNAME = "facebeam"


def _add_file_user(es_home: Path, java_home: str, conf_dir: Path, username: str, password: str):
    """Write users/users_roles with ES's own tool; the password goes through stdin, never argv."""
    for f in ("users", "users_roles"):
        (conf_dir / f).write_text("")
    env = {**os.environ, "ES_JAVA_HOME": java_home, "ES_PATH_CONF": str(conf_dir)}
    env.pop("JAVA_HOME", None)
    try:
        res = subprocess.run([str(es_home / "bin" / "elasticsearch-users"), "useradd", username, "-r", "superuser"],
                             input=f"{password}\n{password}\n", env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise EsLocalError("elasticsearch-users did not finish within 120 s") from None
    if res.returncode != 0:
        out = (res.stdout + res.stderr).replace(password, "***")
        raise EsLocalError(f"elasticsearch-users useradd failed (exit {res.returncode}): {out.strip()[-500:]}")


def credentials(home: Path, es_home: Path, java_home: str) -> tuple:
    """(username, password, auth dir with the file-realm users): those of a previous start of
    `home` when there are any, else new ones (kept in credentials.json, mode 0600)."""
    cred_file, auth_dir = home / "credentials.json", home / "auth"
    creds = None
    if cred_file.is_file():
        try:
            d = json.loads(cred_file.read_text())
            creds = (str(d["username"]), str(d["password"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is unreadable: new credentials for the cluster under %s", cred_file, home)
    if creds is None:
        creds = (USERNAME, secrets.token_urlsafe(24))
        privacy.write_private(cred_file, (json.dumps({"username": creds[0], "password": creds[1]}, indent=2)
                                   + "\n").encode())
        shutil.rmtree(auth_dir, ignore_errors=True)  # users of older credentials
    if not all((auth_dir / f).is_file() for f in ("users", "users_roles")):
        tmp = home / ".auth-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        _add_file_user(es_home, java_home, tmp, *creds)
        shutil.rmtree(auth_dir, ignore_errors=True)
        os.replace(tmp, auth_dir)
    return creds[0], creds[1], auth_dir

