"""Waiting for a starting cluster: health polled until yellow/green with every node joined."""
import requests

from facebeam.pipelines.local import toolkit
from facebeam.pipelines.local.es.layout import EsLocalError, Node
from facebeam.transforms.es_conn import EsConnection


def wait_ready(conn: EsConnection, layout: list, procs: dict, timeout: float):
    """Poll cluster health until yellow/green with every node joined; watch for dead nodes."""
    want = len(layout)
    last = ["no answer yet"]

    def healthy() -> bool:
        for node in layout:
            code = procs[node.name].poll()
            if code is not None:
                raise EsLocalError(f"{node.name} exited with code {code} during start-up; "
                                   f"last lines of {node.console}:\n{log_tail(node)}")
        try:
            health = toolkit.http_json(f"{conn.url}/_cluster/health?wait_for_nodes={want}&timeout=1s", timeout=5,
                                       auth=(conn.username, conn.password), cafile=conn.ca_certs)
        except requests.HTTPError as e:
            last[0] = f"HTTP {e.response.status_code}"
            if e.response.status_code == 401:
                raise EsLocalError(f"{conn.url} rejected the generated credentials (HTTP 401); "
                                   f"see {layout[0].console}") from None
            return False
        except (OSError, ValueError) as e:
            last[0] = f"{type(e).__name__}: {e}"
            return False
        last[0] = f"status {health.get('status')}, {health.get('number_of_nodes')}/{want} nodes"
        return health.get("status") in ("yellow", "green") and health.get("number_of_nodes") == want

    if not toolkit.poll(healthy, timeout):
        raise EsLocalError(f"cluster not ready after {timeout:.0f} s ({last[0]}); last lines of "
                           f"{layout[0].console}:\n{log_tail(layout[0])}")


def log_tail(node: Node, lines: int = 15) -> str:
    """The end of a node's console output, Java stack frames left out, long lines cut."""
    return toolkit.log_tail(node.console, lines, java_frames=False, width=600, missing="(no console log)")
