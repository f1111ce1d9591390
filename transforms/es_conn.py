"""How facebeam reaches Elasticsearch: one small picklable value, resolved once.

`EsConnection.resolve()` takes, field by field, explicit arguments first, then
FACEBEAM_ES_* environment variables, then the connection file that
`facebeam es up` writes. TLS verification is on unless `insecure=True`.
Passwords and API keys never appear in repr, logs or exception messages; on the
command line they come only from the environment or the connection file. A secret
that came from there is pickled as that reference, never as its value: Beam workers
read it from their own environment (or the file), so it is not inside the job.
"""
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from facebeam.transforms.errors import UserError
from facebeam.transforms.home import es_conn_file

log = logging.getLogger(__name__)

# The default connection file is `<facebeam home>/es/connection.json`: transforms.home.es_conn_file().
ENV_URL = "FACEBEAM_ES_URL"
ENV_USER = "FACEBEAM_ES_USER"
ENV_PASSWORD = "FACEBEAM_ES_PASSWORD"
ENV_API_KEY = "FACEBEAM_ES_API_KEY"
ENV_CA_CERTS = "FACEBEAM_ES_CA_CERTS"
ENV_CONN = "FACEBEAM_ES_CONN"
_REDACTED = "'***'"


class EsError(UserError):
    """Base class for facebeam's Elasticsearch errors; messages never hold secrets."""


class EsConfigError(EsError, ValueError):
    """The connection settings are missing or inconsistent."""


class EsNotConfigured(EsConfigError):
    """No cluster named anywhere (no URL, variable or connection file): a command may pick another store."""


class EsUnavailable(EsError):
    """Elasticsearch cannot be reached (refused, timed out, TLS failure)."""


class EsAuthError(EsError):
    """Elasticsearch rejected the credentials."""


class EsBlocked(EsError):
    """A cluster or index block refuses writes (not a credentials problem); the message says how to lift it."""


# Elasticsearch's write-refusing blocks, by the description in its `cluster_block_exception`
# ("blocked by: [FORBIDDEN/8/index write (api)]"): (what it is, how to lift it). Longest first,
# since "cluster read-only (api)" is a prefix of "cluster read-only / allow delete (api)".
BLOCKS = (
    ("cluster read-only / allow delete", "the cluster-wide block cluster.blocks.read_only_allow_delete",
     'PUT /_cluster/settings {"persistent": {"cluster.blocks.read_only_allow_delete": null}}'),
    ("cluster read-only", "the cluster-wide block cluster.blocks.read_only",
     'PUT /_cluster/settings {"persistent": {"cluster.blocks.read_only": null}}'),
    ("flood-stage watermark", "the flood-stage disk watermark's block index.blocks.read_only_allow_delete (a data "
     "node's disk is over cluster.routing.allocation.disk.watermark.flood_stage)",
     "free disk space on the data nodes: Elasticsearch lifts the block itself once usage is below the high "
     'watermark; or PUT /{index}/_settings {{"index.blocks.read_only_allow_delete": null}}'),
    ("index read-only / allow delete", "the index block index.blocks.read_only_allow_delete",
     'PUT /{index}/_settings {{"index.blocks.read_only_allow_delete": null}}'),
    ("index read-only", "the index block index.blocks.read_only",
     'PUT /{index}/_settings {{"index.blocks.read_only": false}}'),
    ("index write", "the index write block index.blocks.write", 'PUT /{index}/_settings {{"index.blocks.write": false}}'),
    ("index metadata", "the index block index.blocks.metadata",
     'PUT /{index}/_settings {{"index.blocks.metadata": false}}'),
)


def block_of(error) -> Optional[tuple]:
    """(what the block is, how to lift it) for an Elasticsearch error that is a cluster/index block, else None.

    `error` is a bulk item's error (a dict) or any exception/text that carries Elasticsearch's answer.
    """
    text = json.dumps(error) if isinstance(error, dict) else str(error)
    if "cluster_block_exception" not in text and "blocked by:" not in text:
        return None
    low = text.lower()
    for needle, what, lift in BLOCKS:
        if needle in low:
            return what, lift
    start = text.find("blocked by:")
    found = text[start:start + 120].split("]")[0] + "]" if start >= 0 else "a cluster block"
    return f"a block ({found})", "find it with GET /_cluster/settings and GET /{index}/_settings, and lift it"


def blocked_error(url: str, index: str, error, done: str = "") -> "EsBlocked":
    """The one-line `EsBlocked` for a block found by `block_of(error)`: names the block and how to lift it."""
    what, lift = block_of(error)
    return EsBlocked(f"Elasticsearch at {url} refuses writes to {index}: {what} is set{done}. Nothing was "
                     f"dead-lettered; lift it ({lift.format(index=index)}) and run the same command again "
                     "(writes are idempotent by face_id)")


def _split_hosts(value) -> tuple:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(h.strip().rstrip("/") for h in value if h and h.strip())


def _strip_userinfo(url: str):
    """(url without user:password@, user, password); a URL may carry credentials."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return clean, user, password


@dataclasses.dataclass(frozen=True, repr=False)
class EsConnection:
    hosts: tuple
    ca_certs: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    api_key: Optional[str] = None
    verify_certs: bool = True
    request_timeout: float = 30
    # Where the secret came from ("env:NAME" or "file:/abs/path"): pickled instead of the secret.
    secret_ref: Optional[str] = None

    def __post_init__(self):
        hosts = _split_hosts(self.hosts)
        object.__setattr__(self, "hosts", hosts)
        if not hosts:
            raise EsNotConfigured("EsConnection needs at least one host URL")
        for h in hosts:
            parts = urlsplit(h)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise EsConfigError(f"not an http(s) URL: {_safe_url(h)!r}")
            if parts.username is not None or parts.password is not None:
                raise EsConfigError(f"credentials inside the URL {_safe_url(h)!r}: pass them separately")
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise EsConfigError(f"{missing} missing for basic auth (user {self.username!r}); "
                                f"set {ENV_PASSWORD if missing == 'password' else ENV_USER}")
        if self.api_key is not None and self.username is not None:
            raise EsConfigError("give either an API key or a username/password, not both")
        if self.ca_certs is not None:
            object.__setattr__(self, "ca_certs", str(self.ca_certs))
        if not isinstance(self.request_timeout, (int, float)) or self.request_timeout <= 0:
            raise EsConfigError(f"request_timeout must be a positive number, got {self.request_timeout!r}")

    # --- never show secrets -------------------------------------------------
    def __repr__(self):
        fields = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = _REDACTED if f.name in ("password", "api_key") and value is not None else repr(value)
            fields.append(f"{f.name}={shown}")
        return f"EsConnection({', '.join(fields)})"

    __str__ = __repr__

    # --- secrets travel as references -------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        if self.secret_ref:
            state["password"] = state["api_key"] = None
            state["_secret_kind"] = "api_key" if self.api_key is not None else "password"
        return state

    def __setstate__(self, state):
        kind = state.pop("_secret_kind", None)
        for name, value in state.items():
            object.__setattr__(self, name, value)
        if kind:
            object.__setattr__(self, kind, _read_secret(self.secret_ref, kind))

    @property
    def url(self) -> str:
        return self.hosts[0]

    @property
    def auth_label(self) -> str:
        if self.api_key is not None:
            return "an API key"
        if self.username is not None:
            return f"user {self.username!r}"
        return "no credentials"

    # --- building -------------------------------------------------------------
    @classmethod
    def from_file(cls, path, **overrides) -> "EsConnection":
        """The connection written by `facebeam es up` (url/hosts, ca_certs, username, password)."""
        data = _read_conn_file(Path(path))
        fields = {
            "hosts": data.get("hosts") or [data.get("url")],
            "ca_certs": data.get("ca_certs"),
            "username": data.get("username"),
            "password": data.get("password"),
            "api_key": data.get("api_key"),
        }
        if fields["password"] is not None or fields["api_key"] is not None:
            fields["secret_ref"] = f"file:{Path(path).absolute()}"
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def resolve(cls, url=None, conn_file=None, username=None, password=None, api_key=None,
                ca_certs=None, insecure=False, request_timeout=30) -> "EsConnection":
        """Explicit arguments, then FACEBEAM_ES_* variables, then the connection file."""
        env = os.environ
        file_path = conn_file or env.get(ENV_CONN)
        if file_path:
            file_data = _read_conn_file(Path(file_path))  # named explicitly: must exist
        elif es_conn_file().is_file():
            file_path = es_conn_file()
            file_data = _read_conn_file(file_path)
        else:
            file_data = {}

        def pick(explicit, env_name, file_key):
            if explicit is not None:
                return explicit, "argument"
            if env_name and env.get(env_name):
                return env[env_name], "environment"
            if file_data.get(file_key) is not None:
                return file_data[file_key], "file"
            return None, None

        hosts, src = pick(url, ENV_URL, "url")
        if src == "file":
            hosts = file_data.get("hosts") or [file_data["url"]]
        if not hosts:
            raise EsNotConfigured(
                f"no Elasticsearch URL: pass --es-url, set {ENV_URL}, point --es-conn/{ENV_CONN} at a "
                f"connection file, or start a local one with `facebeam es up` ({es_conn_file()})")
        # A URL may carry user:password@; take them out so they never get shown.
        clean_hosts, url_user, url_password = [], None, None
        for h in _split_hosts(hosts):
            h, u, p = _strip_userinfo(h)
            clean_hosts.append(h)
            url_user, url_password = url_user or u, url_password or p

        user, user_src = pick(username, ENV_USER, "username")
        pw, pw_src = pick(password, ENV_PASSWORD, "password")
        key, key_src = pick(api_key, ENV_API_KEY, "api_key")
        if url_user is not None and user_src in (None, "file"):
            user, user_src, pw, pw_src = url_user, "url", url_password, "url"
        if key is not None:
            # An API key beats a username/password that only came from the file.
            if user_src == "file":
                user = None
            if pw_src == "file":
                pw = None
        elif user is not None and user_src != "file" and pw_src == "file" and file_data.get("username") != user:
            pw = None  # the file's password belongs to the file's user, not this one

        ca, _ = pick(ca_certs, ENV_CA_CERTS, "ca_certs")
        if ca is not None and not Path(ca).is_file():
            raise EsConfigError(f"CA certificate file not found: {ca}")
        if insecure:
            log.warning("TLS certificate verification is OFF for %s (insecure): "
                        "anyone on the path can read the credentials", clean_hosts[0])
        src = key_src if key is not None else pw_src if pw is not None else None
        ref = {"environment": f"env:{ENV_API_KEY if key is not None else ENV_PASSWORD}",
               "file": f"file:{Path(file_path).absolute()}" if file_path else None}.get(src)
        conn = cls(hosts=tuple(clean_hosts), ca_certs=ca, username=user, password=pw, api_key=key,
                   verify_certs=not insecure, request_timeout=request_timeout, secret_ref=ref)
        log.debug("resolved %r (connection file: %s)", conn, file_path or "none")
        return conn

    # --- using ----------------------------------------------------------------
    def client(self, **overrides):
        """A new `elasticsearch.Elasticsearch` for these settings; overrides pass through."""
        from elasticsearch import Elasticsearch

        kwargs = {"request_timeout": self.request_timeout}
        if any(h.startswith("https:") for h in self.hosts):
            kwargs["verify_certs"] = self.verify_certs
            if self.ca_certs:
                kwargs["ca_certs"] = self.ca_certs
            if not self.verify_certs:
                kwargs["ssl_show_warn"] = False  # warned once in resolve()
        if self.api_key is not None:
            kwargs["api_key"] = self.api_key
        elif self.username is not None:
            if self.password is None:
                raise EsConfigError(f"no Elasticsearch password here for user {self.username!r}: "
                                    f"{_ref_hint(self.secret_ref)}")
            kwargs["basic_auth"] = (self.username, self.password)
        elif self.secret_ref:
            raise EsConfigError(f"no Elasticsearch API key here: {_ref_hint(self.secret_ref)}")
        kwargs.update(overrides)
        return Elasticsearch(list(self.hosts), **kwargs)

    def check(self, client=None, timeout: float = 5.0) -> dict:
        """One health request (no retries); raises EsUnavailable / EsAuthError."""
        return check(client or self.client(), conn=self, timeout=timeout)


def check(client, conn: Optional[EsConnection] = None, timeout: float = 5.0) -> dict:
    """One `GET /_cluster/health` with a short timeout, mapped to typed errors without secrets.

    Not `GET /` or `ping()`: the integ-test-zip server lacks the rest-root module, so
    those answer 405 / False even when the cluster is fine. Returns the health
    (an empty dict when the user may not read it: authenticated, but not allowed).
    """
    import elastic_transport
    from elasticsearch import ApiError, AuthenticationException, AuthorizationException

    url = conn.url if conn else client_url(client)
    who = conn.auth_label if conn else "the configured credentials"
    try:
        return dict(client.options(request_timeout=timeout, max_retries=0).cluster.health())
    except AuthenticationException as e:
        raise EsAuthError(f"authentication failed for {who} at {url} (HTTP {e.meta.status})") from None
    except AuthorizationException:
        return {}  # authenticated, just not allowed to read the health
    except elastic_transport.TlsError as e:
        raise EsUnavailable(f"Elasticsearch at {url} is unreachable: TLS verification failed ({_short(e)}); "
                            "pass the cluster's CA with --es-ca-certs or FACEBEAM_ES_CA_CERTS") from None
    except elastic_transport.TransportError as e:
        raise EsUnavailable(f"Elasticsearch at {url} is unreachable: {_short(e)}") from None
    except ApiError as e:
        raise EsUnavailable(f"Elasticsearch at {url} answered HTTP {e.meta.status}: {e.message}") from None


# --- helpers --------------------------------------------------------------------
def _read_secret(ref: str, kind: str):
    """The secret behind a reference, in this process; None when it is not available here."""
    where, _, name = ref.partition(":")
    if where == "env":
        return os.environ.get(name) or None
    try:
        return json.loads(Path(name).read_text()).get(kind)
    except (OSError, ValueError):
        return None


def _ref_hint(ref) -> str:
    if not ref:
        return f"set {ENV_PASSWORD}"
    where, _, name = ref.partition(":")
    if where == "env":
        return f"set {name} in this worker's environment (secrets are never shipped inside the job)"
    return (f"the connection file {name} is not readable here; on cluster workers set {ENV_USER}/"
            f"{ENV_PASSWORD} (or {ENV_API_KEY}) in their environment instead")


def _read_conn_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EsConfigError(f"connection file not found: {path} (start one with `facebeam es up`)") from None
    except (OSError, ValueError) as e:
        raise EsConfigError(f"cannot read connection file {path}: {type(e).__name__}") from None
    if not isinstance(data, dict) or not (data.get("url") or data.get("hosts")):
        raise EsConfigError(f"connection file {path} has no url/hosts")
    return data


def _safe_url(url: str) -> str:
    return _strip_userinfo(url)[0] if "@" in url else url


def client_url(client) -> str:
    try:
        return str(client.transport.node_pool.all()[0].base_url)
    except Exception:  # noqa: BLE001 - only for a message
        return "the configured URL"


def _short(exc) -> str:
    """The root cause of a transport error in one line."""
    cause = exc
    for _ in range(5):
        nxt = getattr(cause, "errors", None) or ()
        nxt = nxt[0] if nxt else (cause.__cause__ or cause.__context__)
        if nxt is None:
            break
        cause = nxt
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return text[:300]
