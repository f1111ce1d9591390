"""A self-contained HTML page: each probe face beside its top-k faces, distances and verdicts."""
import base64
import html
import io
import itertools

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import images

CROP_PX = 112
STYLE = """
body{font:14px system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
.probe{display:flex;gap:10px;align-items:flex-start;margin:10px 0;padding:8px;background:#fff;border:1px solid #ddd}
figure{margin:0;width:118px;text-align:center;font-size:12px}
figure img{width:112px;height:112px;object-fit:cover;border:3px solid #bbb;display:block}
.same img{border-color:#2a2}.diff img{border-color:#c33}.query img{border-color:#36c}
figcaption{word-break:break-all}
"""


class Crops:
    """Face crops as data URIs; each image is read and decoded once."""

    def __init__(self):
        self._decoded = {}

    def uri(self, path, box) -> str:
        from PIL import Image

        if path not in self._decoded:
            with FileSystems.open(path) as f:
                data = f.read()
            self._decoded[path] = images.decode(path, data, "", detect_max_side=10**9).bgr
        bgr = self._decoded[path]
        x, y, w, h = box
        m = int(0.2 * max(w, h))
        crop = bgr[max(0, y - m):y + h + m, max(0, x - m):x + w + m, ::-1]
        im = Image.fromarray(crop.copy()).resize((CROP_PX, CROP_PX))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(cls, uri, caption) -> str:
    return f'<figure class="{cls}"><img src="{uri}" alt=""><figcaption>{caption}</figcaption></figure>'


def render(rows, spec) -> str:
    crops = Crops()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>facebeam query report</title>"
             f"<style>{STYLE}</style></head><body><h1>facebeam query report</h1>"
             f"<p>model {html.escape(spec.model)} / detector {html.escape(spec.detector)}, {spec.metric} "
             f"distance, same person at &le; {spec.threshold}</p>"]
    key = lambda r: (r["probe_path"], r["probe_face_index"])
    for (path, face), group in itertools.groupby(sorted(rows, key=lambda r: (*key(r), r["rank"])), key=key):
        group = list(group)
        first = group[0]
        probe_box = (first["probe_box_x"], first["probe_box_y"], first["probe_box_w"], first["probe_box_h"])
        label = f"<br>label: {html.escape(first['top_label'])}" if first.get("top_label") else ""
        figs = [_figure("query", crops.uri(path, probe_box), f"{html.escape(path.rsplit('/', 1)[-1])} #{face}{label}")]
        for r in group:
            verdict = "same" if r["same_person"] else "diff"
            hit_box = (r["hit_box_x"], r["hit_box_y"], r["hit_box_w"], r["hit_box_h"])
            caption = (f"{r['rank']}. {html.escape(r['hit_image_path'].rsplit('/', 1)[-1])}<br>"
                       f"d={r['distance']:.3f} {'same' if r['same_person'] else 'different'}")
            figs.append(_figure(verdict, crops.uri(r["hit_image_path"], hit_box), caption))
        parts.append(f'<div class="probe">{"".join(figs)}</div>')
    parts.append("</body></html>")
    return "".join(parts)


def write(path: str, rows, spec) -> None:
    with FileSystems.create(path) as f:
        f.write(render(rows, spec).encode())
