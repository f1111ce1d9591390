"""Test helpers: the sample data, reading outputs, the labeled pairs."""
import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "faces"))
PAIRS = os.path.join(SAMPLE, "face-recognition-pivot.csv")


def sample_images():
    return sorted(glob.glob(os.path.join(SAMPLE, "*.jpg")))


def read_rows(folder: str) -> list:
    files = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    assert files, f"no parquet files in {folder}"
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def largest_face_by_file(rows) -> dict:
    best = {}
    for r in rows:
        name = os.path.basename(r["image_path"])
        if name not in best or r["box_w"] * r["box_h"] > best[name]["box_w"] * best[name]["box_h"]:
            best[name] = r
    return best


def labeled_pairs():
    from facebeam.transforms import labels

    return labels.read_pairs(PAIRS)


def pair_accuracy(vectors: dict, spec) -> float:
    """Share of the 280 labeled pairs judged right by the spec's threshold."""
    right = 0
    pairs = labeled_pairs()
    for x, y, same in pairs:
        d = float(spec.distance(np.asarray(vectors[x]), np.asarray(vectors[y])))
        right += (d <= spec.threshold) == same
    return right / len(pairs)


def synthetic_shards(folder: str, n: int, spec, files: int = 2, seed: int = 0) -> list:
    """Face rows with random vectors in the real schema (for load and fault tests); returns the rows."""
    import pyarrow as pa

    from facebeam.transforms import records

    rng = np.random.default_rng(seed)
    vectors = rng.normal(0, 0.1, (n, spec.dim)).astype(np.float32)
    rows = []
    for i in range(n):
        sha = f"{seed:08x}{i:056x}"
        box = (10 + i % 50, 20, 100, 100)
        rows.append({
            "face_id": records.face_id(sha, box, spec), "image_path": f"synthetic/{i}.jpg", "image_sha256": sha,
            "face_index": 0, "image_width": 640, "image_height": 480,
            "box_x": box[0], "box_y": box[1], "box_w": box[2], "box_h": box[3],
            "left_eye_x": 40, "left_eye_y": 60, "right_eye_x": 80, "right_eye_y": 60, "confidence": 1.0,
            "label": None, "model": spec.model, "detector": spec.detector, "align": spec.align, "metric": spec.metric,
            "spec_id": spec.spec_id, "spec": spec.to_json(), "deepface_version": spec.deepface_version,
            "facebeam_version": "test", "embedding": vectors[i].tolist(),
        })
    out = os.path.join(folder, "embeddings")
    os.makedirs(out, exist_ok=True)
    schema = records.face_schema(spec.dim)
    for k in range(files):
        part = rows[k::files]
        pq.write_table(pa.Table.from_pylist(part, schema=schema), os.path.join(out, f"part-{k:05d}.parquet"))
    return rows


def drop_versions(client, alias: str) -> None:
    """Delete every concrete index facebeam made behind `alias` (deletes need explicit names)."""
    names = list(client.indices.get(index=f"{alias}-*", ignore_unavailable=True).body)
    if names:
        client.indices.delete(index=",".join(names))


def identities() -> dict:
    """file name -> person id, from the sample's 'Yes' pairs (union-find); files never paired get no id."""
    from facebeam.transforms import labels

    return {name: f"person-{who}" for name, who in labels.identities_from_pairs(labeled_pairs()).items()}


def job(module, argv, pipeline=None):
    """Run a command's job in-process from command-line words, as `facebeam <command>` would."""
    from facebeam.pipelines import options

    config = module.configure(*options.parse(module.build_parser(), argv, beam=getattr(module, "BEAM", True)))
    return module.run(config, pipeline)


def render_in_chromium(page, tmp_path, window="1000,800", extra_flags=()):
    """Open an HTML page in headless Chromium: (images that decoded, images in the page, screenshot pixels).

    A script added to a copy of the page counts the images that loaded; the screenshot is of the page itself.
    """
    import shutil
    from pathlib import Path

    import numpy as np
    from PIL import Image

    page = Path(page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for this test (.ci/run installs it)"
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", """<script>
      addEventListener('load', () => { const imgs = [...document.images];
        document.title = 'rendered ' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + ' of ' + imgs.length; });
      </script></body>"""))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", *extra_flags]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<title>rendered (\d+) of (\d+)</title>", dom)
    shot = tmp_path / f"shot-{page.stem}.png"
    subprocess.run([chromium, *flags, f"--window-size={window}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    return (int(found.group(1)), int(found.group(2))) if found else (None, None), pixels


def on_a_terminal(*words, env=None) -> str:
    """`facebeam WORDS` with a 100x24 pseudo-terminal as its stdout and stderr: everything it wrote."""
    import fcntl
    import pty
    import struct
    import termios

    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "facebeam.pipelines.cli", *words], stdin=child, stdout=child,
                         stderr=child, cwd=ROOT, env={**os.environ, **(env or {})})
    os.close(child)
    out = b""
    while True:
        try:
            data = os.read(parent, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    assert p.wait(timeout=600) == 0, out[-2000:]
    os.close(parent)
    return out.decode(errors="replace")


def fresh_collection(src: str, dst) -> str:
    """A copy of a collection's shards as a new collection: the stores it was loaded into and the outputs made from
    it (its records) stay with the original, so a `forget` through the copy cannot reach the session's sample."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("stores.json", "copies.json"))
    return str(dst)
