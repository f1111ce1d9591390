"""Running as root: Elasticsearch refuses root, so its nodes run as an unprivileged account.

`run_as_account()` is that account ($FACEBEAM_ES_RUN_AS, default nobody) when we are root,
else None; the node folders are handed to it (`chown_tree`) and every folder above them must
let it through (`check_reachable`). The drop itself happens at exec (toolkit.spawn_detached).
"""
import os
import pwd
import stat
from pathlib import Path
from typing import Optional

from facebeam.pipelines.local.es.layout import EsLocalError
from facebeam.transforms.home import facebeam_home

ENV_RUN_AS = "FACEBEAM_ES_RUN_AS"  # OS account for the nodes when we are root


def run_as_account() -> Optional[pwd.struct_passwd]:
    """Elasticsearch refuses to run as root; as root, nodes run as FACEBEAM_ES_RUN_AS (default nobody)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(ENV_RUN_AS) or "nobody"
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise EsLocalError(f"running as root, and Elasticsearch refuses root: no account {name!r} to run it as "
                           f"(set {ENV_RUN_AS} to an unprivileged user)") from None
    if account.pw_uid == 0:
        raise EsLocalError(f"{ENV_RUN_AS}={name} is root; Elasticsearch needs an unprivileged account")
    return account


def check_reachable(path: Path, account: pwd.struct_passwd):
    """Every parent of `path` must let the node account through (o+x), or the node cannot start.

    facebeam's own state folder and the folders under it are opened for passing through (o+x, never
    o+r): a private umask makes them 0700, and passing through lists nothing. Folders above it are
    the user's, so they are only checked.
    """
    own = facebeam_home()
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid != account.pw_uid and not st.st_mode & stat.S_IXOTH and st.st_uid == os.geteuid() \
                and (parent == own or own in parent.parents):
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            continue
        if st.st_uid != account.pw_uid and not st.st_mode & stat.S_IXOTH:
            raise EsLocalError(f"{parent} is not searchable by {account.pw_name!r}, the account the nodes run as "
                               f"(Elasticsearch refuses root): chmod o+x it or use another --home")


def chown_tree(root: Path, account: pwd.struct_passwd):
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, account.pw_uid, account.pw_gid)

