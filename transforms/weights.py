"""Offline model weights: seeded from packages that ship them, never downloaded.

deepface fetches weights lazily from the internet on first use, which hangs or
fails on air-gapped workers. Here every weight lookup goes through a guard that
returns the local file, copies it from a package that ships it, or raises
`WeightsMissing` naming the file and where to put it.
"""
import contextlib
import dataclasses
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
    "mmod_human_face_detector.dat": ("face_recognition_models", "models/mmod_human_face_detector.dat"),
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
        with contextlib.suppress(ImportError):
            out.append((importlib.import_module(module), attr, fn))
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


# The weight files a spec's model and detector read, where known exactly; a check needs no loading.
MODEL_FILES = {"Dlib": ("dlib_face_recognition_resnet_model_v1.dat",)}
DETECTOR_FILES = {"dlib": ("shape_predictor_5_face_landmarks.dat",),
                  "mmod": ("shape_predictor_5_face_landmarks.dat", "mmod_human_face_detector.dat"),
                  "dlib_mmod": ("shape_predictor_5_face_landmarks.dat", "mmod_human_face_detector.dat")}


def require(spec) -> list | None:
    """Check (cheaply) that the spec's weight files are there, seeding shipped ones; returns their paths.

    Raises WeightsMissing naming the file and where it goes. Nothing is loaded or imported. For a
    model or detector whose files are not listed here it returns None: only deepface knows their
    file names, so the caller loads the model once to find out (`jobs.preflight`).
    """
    if spec.model in MODEL_FILES and spec.detector in DETECTOR_FILES:
        return [resolve(f) for f in (*MODEL_FILES[spec.model], *DETECTOR_FILES[spec.detector])]
    return None


# --- dlib's face ResNet as an ONNX model ------------------------------------------------------
# dlib (this build: no BLAS) runs its ResNet at ~75 ms per face on one core; onnxruntime runs the
# same network, same weights, at ~6 ms, giving dlib's descriptors to within 1e-6 (tests). The
# network is dlib's dnn_face_recognition_ex.cpp `anet_type`; its .dat stores each layer's
# parameters, input side first, as a tensor (version 2, shape as dlib ints, then little-endian
# float32). The model is built in memory when a worker loads it: nothing is written or fetched.
DLIB_RESNET_MEAN_RGB = (122.782, 117.001, 104.298)  # input_rgb_image_sized: (pixel - mean) / 256


def _dlib_int(v: int) -> bytes:
    """dlib's serialization of a non-negative integer: a byte count, then little-endian bytes."""
    if v == 0:
        return b"\x01\x00"
    out = []
    while v:
        out.append(v & 0xFF)
        v >>= 8
    return bytes([len(out)]) + bytes(out)


def _dlib_resnet_layout():
    """(kind, inputs, outputs, kernel) of each parameterized layer, input side first."""
    def res(cin, n):
        return [("con", cin, n, 3), ("aff", n, n, 0), ("con", n, n, 3), ("aff", n, n, 0)]

    layers = [("con", 3, 32, 7), ("aff", 32, 32, 0)] + res(32, 32) * 3
    for cin, n, blocks in ((32, 64, 3), (64, 128, 2), (128, 256, 2), (256, 256, 0)):
        layers += res(cin, n) + res(n, n) * blocks
    return layers


def _dlib_resnet_params(path: str):
    """([(layer, float64 params)], fc weights 256x128) read from dlib's .dat."""
    import numpy as np

    with open(path, "rb") as f:
        buf = f.read()
    pos, params = 0, []

    def tensor_at(shape, pos):
        head = b"\x01\x02" + b"".join(_dlib_int(d) for d in shape)
        i = buf.find(head, pos)
        if i < 0:
            raise ValueError(f"{path}: no tensor of shape {shape} after byte {pos}: not dlib's face ResNet v1")
        n = int(np.prod(shape))
        return np.frombuffer(buf, "<f4", n, i + len(head)).astype(np.float64), i + len(head) + 4 * n

    for layer in _dlib_resnet_layout():
        kind, cin, cout, k = layer
        size = cout * cin * k * k + cout if kind == "con" else 2 * cout
        p, pos = tensor_at((size, 1, 1, 1), pos)
        params.append((layer, p))
    fc, _ = tensor_at((256, 128, 1, 1), pos)
    return params, fc.reshape(256, 128)


def _pb_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def _pb(field: int, value) -> bytes:
    """One protobuf field: an int (varint), a float (fixed32), or bytes/str (length-delimited)."""
    import struct

    if isinstance(value, (bool, int)):
        return _pb_varint(field << 3) + _pb_varint(int(value))
    if isinstance(value, float):
        return _pb_varint(field << 3 | 5) + struct.pack("<f", value)
    value = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(value)) + value


def _onnx_tensor(name: str, arr) -> bytes:  # TensorProto: dims 1, data_type 2, name 8, raw_data 9
    import numpy as np

    arr = np.ascontiguousarray(arr)
    kind = {np.dtype("float32"): 1, np.dtype("int64"): 7}[arr.dtype]
    raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return b"".join(_pb(1, int(d)) for d in arr.shape) + _pb(2, kind) + _pb(8, name) + _pb(9, raw)


def _onnx_node(op: str, inputs, outputs, **attrs) -> bytes:  # NodeProto: input 1, output 2, op_type 4, attribute 5
    def attr(name, ints):  # AttributeProto: name 1, ints 8, type 20 (INTS = 7)
        return _pb(1, name) + b"".join(_pb(8, int(i)) for i in ints) + _pb(20, 7)

    return (b"".join(_pb(1, i) for i in inputs) + b"".join(_pb(2, o) for o in outputs) + _pb(4, op)
            + b"".join(_pb(5, attr(k, v)) for k, v in attrs.items()))


def _onnx_value(name: str, dims) -> bytes:  # ValueInfoProto -> TypeProto.tensor_type(elem_type, shape)
    shape = b"".join(_pb(1, _pb(2, d) if isinstance(d, str) else _pb(1, d)) for d in dims)
    return _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + _pb(2, shape)))


def dlib_resnet_onnx(path: str) -> bytes:
    """dlib's face ResNet (.dat) as ONNX model bytes: input (N, 3, 150, 150) float32, RGB, each
    channel (pixel - DLIB_RESNET_MEAN_RGB) / 256; output (N, 128), dlib's face descriptor.

    Each affine (frozen batch norm) is folded into the conv before it. dlib's add_prev adds
    tensors of different shapes by zero-padding the smaller one at the end of each axis; so
    does this graph, with Pad.
    """
    import numpy as np

    params, fc = _dlib_resnet_params(path)
    layers = iter(params)
    nodes, inits, count = [], [], [0]

    def name(prefix):
        count[0] += 1
        return f"{prefix}{count[0]}"

    def conv_affine(x, stride):
        ((_, cin, cout, k), p), (_, a) = next(layers), next(layers)
        w, b = p[: cout * cin * k * k].reshape(cout, cin, k, k), p[cout * cin * k * k:]
        gamma, beta = a[:cout], a[cout:]
        wn, bn, y = name("W"), name("B"), name("conv")
        inits.extend([_onnx_tensor(wn, (w * gamma[:, None, None, None]).astype(np.float32)),
                      _onnx_tensor(bn, (b * gamma + beta).astype(np.float32))])
        pad = k // 2 if stride == 1 else 0  # dlib's con_: padding nr/2 at stride 1, else 0
        nodes.append(_onnx_node("Conv", [x, wn, bn], [y], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        return y

    def op(kind, *inputs, **attrs):
        y = name(kind)
        nodes.append(_onnx_node(kind, list(inputs), [y], **attrs))
        return y

    def pad(x, pads):
        p = name("pads")
        inits.append(_onnx_tensor(p, np.array(pads, np.int64)))
        return op("Pad", x, p)

    def residual(x):
        return op("Relu", op("Add", conv_affine(op("Relu", conv_affine(x, 1)), 1), x))

    def residual_down(x, cin, cout, size):
        y = conv_affine(op("Relu", conv_affine(x, 2)), 1)
        skip = op("AveragePool", x, kernel_shape=[2, 2], strides=[2, 2])
        ys, ss = 1 + (size - 3) // 2, 1 + (size - 2) // 2
        out = max(ys, ss)
        if ys < out:
            y = pad(y, [0, 0, 0, 0, 0, 0, out - ys, out - ys])
        if ss < out or cin < cout:
            skip = pad(skip, [0, 0, 0, 0, 0, cout - cin, out - ss, out - ss])
        return op("Relu", op("Add", y, skip)), out

    x = op("MaxPool", op("Relu", conv_affine("input", 2)), kernel_shape=[3, 3], strides=[2, 2])
    size = 35  # 150 -> conv 7x7/2 -> 72 -> max pool 3x3/2 -> 35
    for _ in range(3):
        x = residual(x)
    for cin, cout, blocks in ((32, 64, 3), (64, 128, 2), (128, 256, 2), (256, 256, 0)):
        x, size = residual_down(x, cin, cout, size)
        for _ in range(blocks):
            x = residual(x)
    inits.append(_onnx_tensor("fc", fc.astype(np.float32)))
    nodes.append(_onnx_node("MatMul", [op("Flatten", op("GlobalAveragePool", x)), "fc"], ["descriptor"]))
    graph = (b"".join(_pb(1, n) for n in nodes) + _pb(2, "dlib_face_recognition_resnet_model_v1")
             + b"".join(_pb(5, t) for t in inits)
             + _pb(11, _onnx_value("input", ["N", 3, 150, 150])) + _pb(12, _onnx_value("descriptor", ["N", 128])))
    # ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8 (domain "", version 17)
    return _pb(1, 8) + _pb(2, "facebeam") + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 17))


# --- dlib's MMOD CNN face detector as an ONNX model -------------------------------------------
# The network is dlib's dnn_mmod_face_detection_ex.cpp `net_type`: three 5x5/2 convs (16, 32, 32
# filters), three 5x5/1 convs (45), each followed by batch norm (stored as bn_con2, frozen to an
# affine here, as dlib does on load) and relu, then a 9x9/1 conv to one score map. Its input is
# dlib's tiled image pyramid (facebeam.transforms.mmod builds it); its loss layer stores the
# detector window and the non-max suppression thresholds, which are read here too.
@dataclasses.dataclass(frozen=True)
class MmodOptions:
    window: tuple  # (width, height) of the detector window in pyramid pixels
    nms_iou: float  # loss_mmod's overlaps_nms: IoU (against the bounding box of both) above which ...
    nms_covered: float  # ... or share of either box covered above which a lower-scoring box is dropped
    mean_rgb: tuple  # input_rgb_image_pyramid: (pixel - mean) / 256
    pyramid_padding: int
    pyramid_outer_padding: int
    stride: int  # an output cell (c, r) maps to input-tensor point (stride*c + offset, stride*r + offset)
    offset: int


class _DlibStream:
    """A reader of dlib's serialization: ints as a byte count then little-endian bytes (0x80 = negative),
    strings as an int length then bytes, floats as mantissa and exponent ints, tensors as version 2,
    four int dims, then little-endian float32."""

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def int(self) -> int:
        control = self.buf[self.pos]
        n = control & 0x0F
        value = int.from_bytes(self.buf[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if control & 0x80 else value

    def str(self) -> str:
        n = self.int()
        self.pos += n
        return self.buf[self.pos - n:self.pos].decode("latin-1")

    def float(self) -> float:
        import math

        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # dlib's float_details: 32000 inf, 32001 -inf, 32002 nan
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def tensor(self):
        import numpy as np

        if self.int() != 2:
            raise ValueError("not a dlib tensor (version 2)")
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims))
        out = np.frombuffer(self.buf, "<f4", n, self.pos).astype(np.float64)
        self.pos += 4 * n
        return out.reshape(dims)

    def alias(self) -> tuple:
        if self.int() != 1:
            raise ValueError("not a dlib alias_tensor (version 1)")
        return tuple(self.int() for _ in range(4))


def dlib_mmod_params(path: str):
    """(MmodOptions, [(W (out, in, k, k), b (out,), stride, pad, relu)]) from dlib's MMOD .dat,
    each batch norm folded into the conv before it."""
    import re

    import numpy as np

    with open(path, "rb") as f:
        buf = f.read()
    s = _DlibStream(buf)
    if s.int() != 1 or s.str() != "loss_mmod_":
        raise ValueError(f"{path}: not a dlib MMOD detector (no loss_mmod_ at the start)")
    version = s.int()
    if version == 1:
        windows = [(s.int(), s.int())]
    else:  # detector_window_details: version, width, height, label
        windows = []
        for _ in range(s.int()):
            s.int()
            windows.append((s.int(), s.int()))
            s.str()
    if len(windows) != 1:
        raise ValueError(f"{path}: {len(windows)} detector windows; the face detector has one")
    s.float(), s.float(), s.float()  # loss per false alarm, per missed target, truth-match IoU
    nms_iou, nms_covered = s.float(), s.float()
    s.pos = buf.index(b"input_rgb_image_pyramid", s.pos) - 2
    kind = s.str()
    mean = (s.float(), s.float(), s.float())
    padding, outer = (s.int(), s.int()) if kind == "input_rgb_image_pyramid2" else (10, 11)

    convs, base = [], s.pos
    for m in re.finditer(rb"\x01\x05con_4|\x01\x07bn_con2", buf[base:]):
        s.pos = base + m.start()
        name = s.str()
        if name == "con_4":
            params = s.tensor().ravel()
            n, kh, kw, sy, sx, py, px = (s.int() for _ in range(7))
            w = params[:-n].reshape(n, -1, kh, kw)
            convs.append([w, params[-n:], (sy, sx), (py, px), False])
        else:  # bn_con2: params, gamma, beta, means, invstds, running means, running variances, ...
            params = s.tensor().ravel()
            s.alias(), s.alias()
            s.tensor(), s.tensor()
            means, variances = s.tensor().ravel(), s.tensor().ravel()
            s.int(), s.int()  # updates, running stats window
            s.float(), s.float(), s.float(), s.float()  # learning-rate and weight-decay multipliers
            eps = s.float()
            k = len(means)
            gamma = params[:k] / np.sqrt(variances + eps)
            beta = params[k:] - gamma * means
            w, b = convs[-1][0], convs[-1][1]
            convs[-1][0], convs[-1][1] = w * gamma[:, None, None, None], b * gamma + beta
            convs[-1][4] = True  # every affine here is followed by a relu (rcon5, downsampler)
    stride, offset = 1, 0
    for w, _, (sy, _sx), (py, _px), _ in reversed(convs):  # dlib's con_::map_output_to_input, top down
        offset = offset * sy - py + w.shape[2] // 2
        stride *= sy
    options = MmodOptions(window=windows[0], nms_iou=nms_iou, nms_covered=nms_covered, mean_rgb=mean,
                          pyramid_padding=padding, pyramid_outer_padding=outer, stride=stride, offset=offset)
    return options, [tuple(c) for c in convs]


def dlib_mmod_onnx(path: str):
    """(ONNX model bytes, MmodOptions) for dlib's MMOD face detector: input (N, 3, H, W) float32, the
    tiled pyramid already normalized; output (N, 1, H', W'), the detection score at each cell."""
    import numpy as np

    options, convs = dlib_mmod_params(path)
    nodes, inits = [], []
    x = "input"
    for i, (w, b, stride, pad, relu) in enumerate(convs):
        inits += [_onnx_tensor(f"W{i}", w.astype(np.float32)), _onnx_tensor(f"B{i}", b.astype(np.float32))]
        y = f"conv{i}" if relu or i < len(convs) - 1 else "scores"
        nodes.append(_onnx_node("Conv", [x, f"W{i}", f"B{i}"], [y], kernel_shape=list(w.shape[2:]),
                                strides=list(stride), pads=[pad[0], pad[1], pad[0], pad[1]]))
        x = y
        if relu:
            x = f"relu{i}"
            nodes.append(_onnx_node("Relu", [y], [x]))
    graph = (b"".join(_pb(1, n) for n in nodes) + _pb(2, "mmod_human_face_detector")
             + b"".join(_pb(5, t) for t in inits)
             + _pb(11, _onnx_value("input", ["N", 3, "H", "W"])) + _pb(12, _onnx_value("scores", ["N", 1, "h", "w"])))
    return _pb(1, 8) + _pb(2, "facebeam") + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 17)), options
