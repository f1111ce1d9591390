"""facebeam bench runners: the same embed job on Direct, Flink and Spark; images/s for each.

    facebeam bench runners [--photos 1000] [--runners direct,flink-embedded,spark-local] [--json FILE]

The photos are augmented copies of the sample (flips, crops, rescales, recompression),
made at run time in a temp folder.
"""
import argparse
import glob
import json
import logging
import os
import tempfile

from facebeam.pipelines import embed, options
from facebeam.transforms.sources import Inputs
from facebeam.pipelines.runner.defaults import RUNNER_PRESETS, preset_cluster

log = logging.getLogger(__name__)
DEFAULT_SAMPLE = os.path.join("..", "shared", "data", "faces")


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facebeam bench runners", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--sample", default=DEFAULT_SAMPLE)
    parser.add_argument("--runners", default="direct,flink-embedded,spark-local",
                        help=f"comma-separated, of: {', '.join(RUNNER_PRESETS)}")
    parser.add_argument("--json", dest="json_out", default=None)
    ns = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="facebeam-bench-runners-")
    photos_dir = os.path.join(work, "photos")
    os.makedirs(photos_dir)
    augmented_copies(ns.sample, ns.photos, photos_dir)
    results = {}
    for key in ns.runners.split(","):
        with preset_cluster(key):
            s = embed.run(embed.EmbedConfig(Inputs((photos_dir,)), os.path.join(work, key),
                                            beam_args=(*RUNNER_PRESETS[key], *options.QUIET_WORKERS)))
        results[key] = {"images_per_s": s["images_per_s"], "elapsed_s": s["elapsed_s"], "images": s["images_seen"],
                        "faces": s["faces"], "failed": s["images_failed"], "runner": s["runner"]}
        log.info("%s: %.2f images/s", key, s["images_per_s"])
    base = results.get("direct", next(iter(results.values())))["images_per_s"]
    print(f"\n{ns.photos} augmented photos, {os.cpu_count()} cores")
    print(f"{'runner':<16} {'images/s':>9} {'vs direct':>9} {'elapsed s':>10} {'faces':>6}")
    for key, r in results.items():
        print(f"{key:<16} {r['images_per_s']:>9.2f} {r['images_per_s'] / base:>9.2f} {r['elapsed_s']:>10.1f} {r['faces']:>6}")
    if ns.json_out:
        with open(ns.json_out, "w") as f:
            json.dump({"photos": ns.photos, "results": results}, f, indent=2)
    return 0
