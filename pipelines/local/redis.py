"""facebeam redis: a local Redis for identity verification, password on, persistence on.

    facebeam redis up [--port 6390] [--home DIR] [--maxmemory 2gb] [--timeout 30]
    facebeam redis down [--home DIR]
    facebeam redis status [--home DIR]

`up` starts Debian's `redis-server` (7.0; `apt-get install -y redis-server`) on 127.0.0.1
with a generated password, append-only-file persistence (fsync every second) plus RDB
snapshots, and writes `<home>/connection.json` (0600: host, port, password; the home is
`<FACEBEAM_HOME>/redis` by default). The password is made once and kept across restarts,
and so is the data (`<home>/data/`). It is written only to files of mode 0600 (the
connection file and the server's config file), never on a command line nor in a log.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import shutil
import sys
from pathlib import Path

from facebeam.pipelines import jobs, options
from facebeam.pipelines.local import service, toolkit
from facebeam.transforms import privacy
from facebeam.transforms.errors import UserError
from facebeam.transforms.home import facebeam_home
from facebeam.transforms.redis_store import DEFAULT_PORT, RedisConn

log = logging.getLogger(__name__)
BEAM = False
SERVER = "redis-server"


class RedisLocalError(UserError):
    """The local Redis cannot be started or stopped."""


def default_home() -> Path:
    return facebeam_home() / "redis"


def _pid(home: Path):
    try:
        return int((home / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(home: Path):
    pid = _pid(home)
    return pid if pid and toolkit.alive(pid, must_contain=SERVER) else None


def is_running(home: Path | None = None) -> bool:
    """Is the Redis that `up` started under `home` (default: <facebeam home>/redis) running?"""
    return running_pid((home or default_home()).absolute()) is not None


def config_text(home: Path, port: int, password: str, maxmemory: str | None) -> str:
    lines = [
        "bind 127.0.0.1", f"port {port}", "protected-mode yes", "daemonize no",
        f"pidfile {home / 'redis.pid'}", f"logfile {home / 'redis.log'}", f"dir {home / 'data'}",
        f"requirepass {password}",
        # Persistence: the append-only file (fsync every second) and RDB snapshots.
        "appendonly yes", "appendfsync everysec", "save 900 1", "save 300 100", "save 60 10000",
        "dbfilename dump.rdb",
    ]
    if maxmemory:
        lines += [f"maxmemory {maxmemory}", "maxmemory-policy noeviction"]
    return "\n".join(lines) + "\n"


def up(home: Path, port: int = DEFAULT_PORT, maxmemory: str | None = None, timeout: float = 30.0) -> dict:
    server = shutil.which(SERVER)
    if not server:
        raise RedisLocalError(f"no `{SERVER}` on PATH: apt-get install -y redis-server (Debian's Redis 7.0)")
    home = home.absolute()
    with toolkit.file_lock(home.parent / f".{home.name}.lock", timeout=timeout + 30, what="starting Redis",
                           error=RedisLocalError):
        conn_path = home / "connection.json"
        try:
            saved = json.loads(conn_path.read_text())
        except (OSError, ValueError):
            saved = {}
        pid = running_pid(home)
        if pid:
            if saved.get("port") not in (None, port):
                log.info("Redis already running under %s on port %s", home, saved.get("port"))
            return {"pid": pid, "port": saved.get("port", port), "home": str(home), "started": False}
        if toolkit.port_open("127.0.0.1", port, timeout=1.0):
            raise RedisLocalError(f"port {port} on 127.0.0.1 is taken by another process; pick --port")
        password = saved.get("password") or secrets.token_urlsafe(24)
        privacy.make_dirs(str(home / "data"))  # AOF/RDB hold face vectors: 0700, files 0600 (privacy.py)
        privacy.write_private(conn_path, json.dumps({"host": "127.0.0.1", "port": port, "password": password}, indent=2) + "\n")
        privacy.write_private(home / "redis.conf", config_text(home, port, password, maxmemory))
        with privacy.private_umask():  # redis-server creates its files with the umask it inherits
            proc = toolkit.spawn_detached([server, str(home / "redis.conf")], home / "console.log")
        conn = RedisConn(host="127.0.0.1", port=port, conn_file=str(conn_path), timeout_s=2.0)
        def answers() -> bool:
            if proc.poll() is not None:
                raise RedisLocalError(f"redis-server exited with code {proc.returncode}: "
                                      f"{toolkit.log_tail(home / 'redis.log', 5, missing='(no log)')}")
            try:
                conn.check()
            except UserError:
                return False
            return True

        if not toolkit.poll(answers, timeout, interval=0.2):
            toolkit.stop_processes([proc.pid], must_contain=SERVER, timeout=5)
            raise RedisLocalError(f"redis-server did not answer within {timeout:.0f} s; log: {home / 'redis.log'}")
        return {"pid": proc.pid, "port": port, "home": str(home), "started": True}


def down(home: Path, timeout: float = 30.0) -> bool:
    """SIGTERM (Redis writes its RDB snapshot and flushes the AOF on the way out)."""
    pid = running_pid(home.absolute())
    if not pid:
        return False
    toolkit.stop_processes([pid], must_contain=SERVER, timeout=timeout)
    return True


def status(home: Path) -> dict:
    home = home.absolute()
    pid = running_pid(home)
    out = {"home": str(home), "pid": pid, "running": False}
    conn_path = home / "connection.json"
    if not conn_path.is_file():
        return out
    info = json.loads(conn_path.read_text())
    out["port"] = info.get("port")
    conn = RedisConn(host=info.get("host", "127.0.0.1"), port=int(info["port"]), conn_file=str(conn_path), timeout_s=2.0)
    try:
        client = conn.check()
        server = client.info("server")
        persistence = client.info("persistence")
        out.update(running=True, version=server.get("redis_version"), keys=client.dbsize(),
                   aof=bool(persistence.get("aof_enabled")), rdb_last_save=persistence.get("rdb_last_save_time"))
        client.close()
    except UserError as e:
        out["error"] = str(e)
    return out


@dataclasses.dataclass(frozen=True)
class RedisCmdConfig:
    action: str
    home: str
    port: int = DEFAULT_PORT
    maxmemory: str | None = None
    timeout: float = 30.0


def build_parser():
    p = options.parser("facebeam redis", __doc__)
    p.add_argument("action", choices=("up", "down", "status"), help="start, stop, or report on the local Redis")
    p.add_argument("--home", default=None, help="state folder (default <FACEBEAM_HOME>/redis)")
    p.add_argument("--port", type=options.PORT, default=DEFAULT_PORT, help="port on 127.0.0.1 (default %(default)s)")
    p.add_argument("--maxmemory", default=None, help="e.g. 2gb (default: no limit); writes fail past it, nothing is evicted")
    p.add_argument("--timeout", type=options.POSITIVE, default=30.0, help="seconds to wait for `up` (default %(default)s)")
    return p


def configure(a: options.Args, beam_args=()) -> RedisCmdConfig:
    return RedisCmdConfig(action=a.action, home=a.home or str(default_home()), port=a.port, maxmemory=a.maxmemory,
                          timeout=a.timeout)


def _up_line(home: Path, info: dict) -> str:
    verb = "started" if info["started"] else "already running"
    return (f"Redis {verb} on 127.0.0.1:{info['port']} (pid {info['pid']}); password and port in "
            f"{home.absolute() / 'connection.json'} (0600); AOF + RDB persistence in {home.absolute() / 'data'}")


def _status_line(st: dict) -> str:
    if st["running"]:
        return (f"running: Redis {st['version']} on 127.0.0.1:{st['port']} (pid {st['pid']}), {st['keys']} keys, "
                f"AOF {'on' if st['aof'] else 'off'}, home {st['home']}")
    return f"not running ({st.get('error') or 'no server under ' + st['home']})"


def run(config: RedisCmdConfig, pipeline=None) -> dict:
    home = Path(config.home)
    return service.run_action("redis", config.action, {
        "up": service.Action(lambda: up(home, config.port, config.maxmemory, config.timeout),
                             lambda info: _up_line(home, info)),
        "down": service.Action(lambda: {"stopped": down(home)},
                               lambda answer: "stopped" if answer["stopped"] else "not running"),
        "status": service.Action(lambda: status(home), _status_line, ok=lambda st: st["running"]),
    })


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: not s["ok"])


if __name__ == "__main__":
    jobs.entry(main)
