"""Offline model weights: seeded from packages that ship them, never downloaded.

deepface fetches weights lazily from the internet on first use, which hangs or
fails on air-gapped workers. Here every weight lookup goes through a guard that
returns the local file, copies it from a package that ships it, or raises
`WeightsMissing` naming the file and where to put it.
"""
import contextlib
import importlib.util
import logging
import os
import shutil
import threading

from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)

# file name -> (pip package that ships it, path inside that package)
SHIPPED = {
    "dlib_face_recognition_resnet_model_v1.dat": ("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat"),
    "shape_predictor_5_face_landmarks.dat": ("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat"),
}
_lock = threading.Lock()


class WeightsMissing(UserError, RuntimeError):
    def __init__(self, file_name: str, target: str, source_url=None):
        self.file_name, self.target = file_name, target
        hint = f" deepface would fetch it from {source_url}; download it elsewhere and copy it in." if source_url else ""
        super().__init__(
            f"model weights file {file_name!r} is missing: put it at {target} "
            f"(or point DEEPFACE_HOME at a folder whose .deepface/weights/ holds it).{hint} "
            "facebeam never downloads weights at run time."
        )


def weights_dir() -> str:
    home = os.getenv("DEEPFACE_HOME") or os.path.expanduser("~")
    return os.path.join(home, ".deepface", "weights")


def _shipped_path(file_name: str):
    if file_name not in SHIPPED:
        return None
    package, rel = SHIPPED[file_name]
    # find_spec does not import the package (face_recognition_models imports pkg_resources).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], rel)
    return path if os.path.isfile(path) else None


def _install(file_name: str) -> str | None:
    """Copy a shipped file into the weights dir (atomically); None if no package ships it."""
    src = _shipped_path(file_name)
    if src is None:
        return None
    target = os.path.join(weights_dir(), file_name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp.{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, target)
    log.info("seeded %s from the %s package", target, SHIPPED[file_name][0])
    return target


def resolve(file_name: str, source_url=None) -> str:
    target = os.path.join(weights_dir(), file_name)
    if os.path.isfile(target) and os.path.getsize(target) > 0:
        return target
    with _lock:
        if os.path.isfile(target) and os.path.getsize(target) > 0:
            return target
        installed = _install(file_name)
    if installed:
        return installed
    raise WeightsMissing(file_name, target, source_url)


def seed() -> list:
    """Place every shipped weight file under $DEEPFACE_HOME; returns their paths."""
    return [resolve(name) for name in SHIPPED if _shipped_path(name)]


def _guards():
    """(module, attribute, replacement) for every path deepface and retina-face download through."""
    import importlib

    def guarded(file_name, source_url=None, compress_type=None, **_):
        return resolve(file_name, source_url)

    def no_download(url=None, output=None, *args, **kwargs):
        raise WeightsMissing(str(output or url).rsplit("/", 1)[-1], str(output), url)

    out = []
    for module, attr, fn in (("deepface.commons.weight_utils", "download_weights_if_necessary", guarded),
                             ("retinaface.commons.weight_utils", "download_weights_if_necessary",
                              lambda file_name, source_urls: resolve(file_name, source_urls)),
                             ("gdown", "download", no_download)):
        try:
            out.append((importlib.import_module(module), attr, fn))
        except ImportError:
            pass
    return out


_installed = False


@contextlib.contextmanager
def offline():
    """From here on, deepface resolves weights locally or raises WeightsMissing; nothing downloads.

    The guard is installed once per process and stays: patching and restoring module
    attributes is not safe while other threads load models.
    """
    global _installed
    with _lock:
        if not _installed:
            for mod, attr, fn in _guards():
                setattr(mod, attr, fn)
            _installed = True
    yield
