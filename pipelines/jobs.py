"""What every facebeam job shares: argument split, run, metrics summary."""
import json
import logging
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import MetricsFilter

from facebeam.transforms.embed import NAMESPACE

log = logging.getLogger(__name__)


# Workers log errors only, except facebeam's own progress lines.
_QUIET_WORKERS = [
    "--default_sdk_harness_log_level=ERROR",
    '--sdk_harness_log_level_overrides={"facebeam": "INFO"}',
]


def parse(parser, argv):
    """App flags via argparse; everything it does not know goes to Beam (with quiet worker logs)."""
    ns, beam_args = parser.parse_known_args(argv)
    for flag in _QUIET_WORKERS:
        name = flag.split("=", 1)[0]
        if not any(a == name or a.startswith(name + "=") for a in beam_args):
            beam_args.append(flag)
    return ns, beam_args


def user_errors() -> tuple:
    """Exceptions that mean 'your input, settings or cluster is wrong': a message and exit 2, no traceback."""
    from facebeam.pipelines.runner.defaults import RunnerSetupError
    from facebeam.transforms.es_conn import EsError
    from facebeam.transforms.sources import InputError
    from facebeam.transforms.spec import SpecError
    from facebeam.transforms.weights import WeightsMissing

    return InputError, WeightsMissing, EsError, SpecError, RunnerSetupError, ValueError


def cli(run, argv=None, failed=lambda summary: False) -> int:
    """Run a job for the command line: exit 0, 1 when `failed(summary)`, 2 on a user error."""
    try:
        summary = run(argv)
    except user_errors() as e:
        log.error("%s", e)
        return 2
    return 1 if failed(summary) else 0


def counters(result) -> dict:
    """Committed counter values in facebeam's namespace (attempted where a runner has no committed)."""
    out = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (value or 0)
    return out


def image_counts(c: dict) -> dict:
    failed = {k.split(".", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("images_failed.") and v}
    return {
        "images_seen": c.get("images_seen", 0),
        "images_embedded": c.get("images_embedded", 0),
        "faces": c.get("faces", 0),
        "images_failed": failed,
    }


def counted(element, name: str):
    """Identity map that counts elements under `name` (use with beam.Map)."""
    from apache_beam.metrics import Metrics

    Metrics.counter(NAMESPACE, name).inc()
    return element


def write_json(path: str, obj) -> None:
    with FileSystems.create(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str):
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode())


def run(pipeline):
    """Run to completion; returns (result, elapsed seconds)."""
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    return result, time.perf_counter() - started
