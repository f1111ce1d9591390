"""facebeam bench runners: the same embed job on Direct, Flink and Spark; images/s and CPU for each.

    facebeam bench runners [--photos 1000] [--warmup 20] [--runners direct,flink-cluster,spark-cluster]
                           [--scaling flink-cluster] [--json FILE]

Where a small job's Direct run stops paying for worker processes (job_options.IN_PROCESS_MAX_PHOTOS):

    facebeam bench runners --photos 24 --warmup 0 --scaling none --runners direct-processes,direct-in-process

The photos are augmented copies of the sample (flips, crops, rescales, recompression),
made at run time in a temp folder. The cluster presets run on the local standalone
clusters (`facebeam flink|spark up`, started here if needed) in EXTERNAL mode: the
SDK harness runs in the cluster's Beam worker pool, one process per slot, as in
deploy/, and jobs go through the cluster's long-lived job server. Each runner's CPU
time is read (psutil) of the launcher (and its children: Direct's workers)
and of the cluster's processes (JVMs, the job server, the worker pool and its harness
processes). Each runner first runs an untimed `--warmup`-photo job, as a long-lived
cluster's JVMs are warm; a cluster that was not up is started (and stopped after), and its figures
are marked, as its JVMs are still colder than a standing cluster's. `--scaling KEY` runs KEY once more
with one worker (`--sdk_worker_parallelism=1`, and `--parallelism=1` on Flink: one slot, one
harness process) and prints the speed-up of N workers over one, and the parallel
efficiency (speed-up / N). For each cluster job it prints the fixed cost by phase (job
submission, stage set-up, harness start, model load, job end, Spark's scheduling), from the logs of the
cluster's job server and worker pool (`bench/phases.py`).
"""
import contextlib
import dataclasses
import glob
import json
import logging
import os
import shutil
import tempfile
import time

import psutil

from facebeam.pipelines import embed, jobs, options
from facebeam.pipelines.bench import phases
from facebeam.pipelines.bench.synthetic import DEFAULT_SAMPLE
from facebeam.pipelines.local import flink, job_server, spark, workers
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.presets import PRESET_CLUSTERS, RUNNER_PRESETS, preset_cluster
from facebeam.transforms.sources import Inputs

log = logging.getLogger(__name__)
DEFAULT_RUNNERS = "direct,flink-cluster,spark-cluster"


def augmented_copies(sample_dir: str, n: int, out_dir: str) -> list:
    """n distinct photos derived from the sample: each is a new image (new bytes, new faces)."""
    from PIL import Image, ImageOps

    sources = sorted(glob.glob(os.path.join(sample_dir, "*.jpg")))
    made = []
    for i in range(n):
        src = ImageOps.exif_transpose(Image.open(sources[i % len(sources)])).convert("RGB")
        variant = i // len(sources)
        if variant % 2:
            src = ImageOps.mirror(src)
        crop = 0.02 * (variant % 5)
        w, h = src.size
        src = src.crop((int(w * crop), int(h * crop), w - int(w * crop), h - int(h * crop)))
        scale = (1.0, 0.85, 0.7, 0.55)[variant % 4]
        if scale < 1:
            src = src.resize((max(64, int(src.width * scale)), max(64, int(src.height * scale))))
        path = os.path.join(out_dir, f"aug{i:05d}.jpg")
        src.save(path, quality=70 + (variant * 7) % 25)
        made.append(path)
    return made


# --- CPU accounting ---------------------------------------------------------------------------
def _cpu_s(proc: psutil.Process) -> float:
    """A process's own CPU seconds and those of its reaped children."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def tree_cpu_s(roots) -> float:
    """CPU seconds of `roots`, their reaped children and their live descendants."""
    total, seen = 0.0, set()
    for pid in roots:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in family:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                total += _cpu_s(proc)
    return total


def cluster_pids(key: str) -> list:
    """The long-lived processes of a preset's local cluster (JVMs and the worker pool)."""
    which = PRESET_CLUSTERS.get(key)
    if which is None:
        return []
    pool, server = workers.pool_info(which), job_server.info(which)
    pids = [int(st["pid"]) for st in (pool, server) if st]
    live = (flink if which == "flink" else spark).live_pids()
    return pids + [p for ps in live.values() for p in ps]


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_one(key: str, photos_dir: str, out: str, extra=()) -> dict:
    which = PRESET_CLUSTERS.get(key)
    # As a nightly job finds an idle cluster: its pool's spare harnesses ready (pipelines/local/workers.py).
    spares = workers.wait_spares(which, _harnesses(key, extra)) if which else None
    pids = cluster_pids(key)
    load0 = os.getloadavg()
    own0, clu0 = _self_cpu_s(), tree_cpu_s(pids)
    t0 = time.time()
    s = embed.run(embed.EmbedConfig(Inputs((photos_dir,)), out,
                                    beam_args=(*RUNNER_PRESETS[key], *extra, *options.QUIET_WORKERS)))
    t1 = time.time()
    time.sleep(2)  # let the pool / Spark worker reap the harness and executor processes
    own, clu = _self_cpu_s() - own0, tree_cpu_s(pids) - clu0
    elapsed = s["elapsed_s"]
    return {"images_per_s": s["images_per_s"], "elapsed_s": elapsed, "images": s["images_seen"],
            "faces": s["faces"], "failed": s["images_failed"], "runner": s["runner"],
            "cpu_s": round(own + clu, 1), "cpu_launcher_s": round(own, 1), "cpu_cluster_s": round(clu, 1),
            "cores_used": round((own + clu) / elapsed, 2) if elapsed else None,
            "core_s_per_photo": round((own + clu) / max(1, s["images_seen"]), 3),
            "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "phases": _phases(key, t0, t1, extra), "spares_ready": spares}


def _phases(key: str, t0: float, t1: float, extra) -> dict | None:
    """The fixed cost of a cluster job by phase (bench/phases.py); None on Direct."""
    which = PRESET_CLUSTERS.get(key)
    return None if which is None else phases.job_phases(which, t0, t1, _harnesses(key, extra))


def _harnesses(key: str, extra=()) -> int:
    """SDK harness processes a job of preset `key` asks its cluster's pool for."""
    return int(pipeline_options(RUNNER_PRESETS[key] + list(extra)).get_all_options()["sdk_worker_parallelism"] or 1)


#: A one-worker run of a cluster preset: one harness process and, on Flink, one slot (else the
#: one process would still get two slots' bundles on two threads). Spark's executor keeps its cores.
ONE_WORKER = {"flink": ("--sdk_worker_parallelism=1", "--parallelism=1"), "spark": ("--sdk_worker_parallelism=1",)}

#: A cluster the bench starts runs its first jobs on cold JVMs: 2 core-s more per 300-photo Flink job than
#: a standing cluster, even after the warm-up job. A nightly job finds a standing one (`facebeam flink up`).
STANDING, STARTED = "a standing cluster", "a cluster started by this bench: cold JVMs"

BEAM = False  # each runner's Beam flags come from its preset


@dataclasses.dataclass(frozen=True)
class BenchRunnersConfig:
    photos: int = 1000
    warmup: int = 20
    sample: str = DEFAULT_SAMPLE
    runners: tuple = tuple(DEFAULT_RUNNERS.split(","))
    scaling: str = "flink-cluster"  # None: skip the one-harness run
    json_out: str = None


def build_parser():
    parser = options.parser("facebeam bench runners", __doc__)
    parser.add_argument("--photos", type=options.COUNT, default=1000, help="photos per timed job (the sample, repeated)")
    parser.add_argument("--warmup", type=options.NON_NEGATIVE, default=20,
                        help="photos of an untimed job each runner runs first: a long-lived cluster's JVMs "
                             "are warm, a fresh one's are not (default %(default)s; 0: none)")
    parser.add_argument("--sample", default=DEFAULT_SAMPLE, help="photos the jobs read")
    parser.add_argument("--runners", default=DEFAULT_RUNNERS, help=f"comma-separated, of: {', '.join(RUNNER_PRESETS)}")
    parser.add_argument("--scaling", default="flink-cluster",
                        help="preset to run once more with one worker (one harness process; one slot on Flink); "
                             "'none' to skip (default %(default)s)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the figures to FILE")
    return parser


def configure(a: options.Args, beam_args=()) -> BenchRunnersConfig:
    return BenchRunnersConfig(photos=a.photos, warmup=a.warmup, sample=a.sample,
                              runners=tuple(k for k in a.runners.split(",") if k),
                              scaling=None if a.scaling in ("", "none") else a.scaling, json_out=a.json_out)


def run(ns: BenchRunnersConfig, pipeline=None) -> dict:
    work = tempfile.mkdtemp(prefix="facebeam-bench-runners-")
    photos_dir = os.path.join(work, "photos")
    os.makedirs(photos_dir)
    made = augmented_copies(ns.sample, ns.photos, photos_dir)
    warm_dir = os.path.join(work, "warmup")
    os.makedirs(warm_dir)
    for path in made[:ns.warmup]:  # copies: a symlink out of the input folder is not read (sources.py)
        shutil.copyfile(path, os.path.join(warm_dir, os.path.basename(path)))
    keys, scaling = list(ns.runners), ns.scaling
    results = {}
    for key in keys + ([scaling] if scaling and scaling not in keys else []):
        was_up = bool(cluster_pids(key))
        with preset_cluster(key):
            if ns.warmup:
                run_one(key, warm_dir, os.path.join(work, key + "-warmup"))
            results[key] = run_one(key, photos_dir, os.path.join(work, key))
            results[key]["cluster_was_up"] = was_up if PRESET_CLUSTERS.get(key) else None
            log.info("%s: %.2f images/s", key, results[key]["images_per_s"])
            if key == scaling:
                n = int(pipeline_options(RUNNER_PRESETS[key]).get_all_options()["sdk_worker_parallelism"] or 1)
                one = run_one(key, photos_dir, os.path.join(work, key + "-1"), extra=ONE_WORKER[PRESET_CLUSTERS[key]])
                results[f"{key} x1"] = one | {"cluster_was_up": was_up}
                speedup = results[key]["images_per_s"] / one["images_per_s"] if one["images_per_s"] else None
                results["scaling"] = {"preset": key, "processes": n, "speedup": speedup,
                                      "efficiency": speedup / n if speedup and n else None}
    base = results.get("direct", next(iter(results.values())))["images_per_s"]
    print(f"\n{ns.photos} augmented photos, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"each runner ran an untimed {ns.warmup}-photo job first")
    print(f"{'runner':<18} {'images/s':>9} {'vs direct':>9} {'elapsed s':>10} {'faces':>6} {'cpu s':>7} "
          f"{'cores':>6} {'core-s/photo':>12}")
    for key, r in results.items():
        if key == "scaling":
            continue
        print(f"{key:<18} {r['images_per_s']:>9.2f} {r['images_per_s'] / base:>9.2f} {r['elapsed_s']:>10.1f} "
              f"{r['faces']:>6} {r['cpu_s']:>7.1f} {r['cores_used']:>6.2f} {r['core_s_per_photo']:>12.3f}")
    for key, r in results.items():
        if key != "scaling" and r.get("phases"):
            print(f"{key} fixed cost per job: {phases.describe(r['phases'])} "
                  f"({r['spares_ready']} spare harness(es) ready at the start; "
                  f"{STANDING if r['cluster_was_up'] else STARTED})")
    sc = results.get("scaling")
    if sc and sc["speedup"]:
        print(f"{sc['preset']}: {sc['processes']} harness processes vs 1: speed-up {sc['speedup']:.2f}x, "
              f"parallel efficiency {sc['efficiency']:.2f}")
    if ns.json_out:
        with open(ns.json_out, "w") as f:
            json.dump({"photos": ns.photos, "warmup_photos": ns.warmup, "cores": os.cpu_count(), "results": results}, f, indent=2)
    return results


def main(argv=None) -> int:
    import sys

    return jobs.main(sys.modules[__name__], argv)
