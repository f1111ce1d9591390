"""A self-contained HTML page: each probe face beside its top-k faces, distances, verdicts and labels.

Captions name each photo by as much of its path as tells it apart from the others in the report
(`short_names`), plus its label. A photo that cannot be read now (moved or deleted since it was indexed)
shows as a blank with its caption. Memory: photos are decoded one at a time and only their face crops
(112 px JPEGs, a few KB each) are kept, so a report over many probes stays small.
"""
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
.gone{width:112px;height:112px;border:3px dashed #bbb;display:flex;align-items:center;justify-content:center;color:#888}
"""


def short_names(paths) -> dict:
    """path -> the fewest trailing path parts that still tell it apart from every other path here."""
    from collections import Counter

    parts = {p: p.replace("\\", "/").split("/") for p in set(paths)}
    out, pending, n = {}, set(parts), 1
    while pending:
        counts = Counter(tuple(mine[-n:]) for mine in parts.values())
        for p in list(pending):
            if counts[tuple(parts[p][-n:])] == 1 or n >= len(parts[p]):
                out[p] = "/".join(parts[p][-n:])
                pending.discard(p)
        n += 1
    return out


class Crops:
    """Face crops as small JPEG data URIs, made photo by photo: each photo is decoded once, its faces are
    cropped, and the decoded pixels are dropped before the next photo. Memory holds crops, not photos."""

    def __init__(self, wanted):
        """`wanted`: (path, box) pairs; crops() makes them all."""
        self._by_path = {}
        for path, box in wanted:
            self._by_path.setdefault(path, set()).add(tuple(int(v) for v in box))
        self._uris = {}

    def make(self) -> "Crops":
        from PIL import Image

        for path, boxes in self._by_path.items():
            try:
                with FileSystems.open(path) as f:
                    data = f.read()
                rgb, scale = _decode_for_crops(data, min(max(w, h) for _, _, w, h in boxes))
            except (OSError, ValueError, Image.DecompressionBombError):  # moved, deleted or changed since it was
                continue  # indexed: its faces show as not readable, the report still renders
            del data
            for box in boxes:
                self._uris[(path, box)] = _crop_uri(rgb, box, scale)
            del rgb
        return self

    def uri(self, path, box):
        """The crop's data URI, or None when its photo could not be read."""
        return self._uris.get((path, tuple(int(v) for v in box)))


def _decode_for_crops(data: bytes, smallest_face: int):
    """(RGB PIL image after EXIF orientation, its size / the original's). A JPEG decodes scaled down
    (1/2, 1/4, 1/8) as far as its smallest face still gives a full-size crop: a fraction of the pixels."""
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if im.format == "JPEG":
        factor = 1
        while factor < 8 and smallest_face * 1.4 / (factor * 2) >= CROP_PX:
            factor *= 2
        im.draft("RGB", (-(-w // factor), -(-h // factor)))
    scale = im.size[0] / w
    im = ImageOps.exif_transpose(im)
    if im.mode != "RGB":
        im = images.to_rgb8(im)
    return im, scale


def _crop_uri(rgb, box, scale: float = 1.0) -> str:
    from PIL import Image

    x, y, w, h = (v * scale for v in box)
    m = 0.2 * max(w, h)
    crop = rgb.crop((int(max(0, x - m)), int(max(0, y - m)), int(min(rgb.width, x + w + m)),
                     int(min(rgb.height, y + h + m))))
    im = crop.resize((CROP_PX, CROP_PX), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(cls, uri, caption) -> str:
    face = f'<img src="{uri}" alt="">' if uri else '<div class="gone">photo not readable now</div>'
    return f'<figure class="{cls}">{face}<figcaption>{caption}</figcaption></figure>'


def _boxes(r, who):
    return (r[f"{who}_box_x"], r[f"{who}_box_y"], r[f"{who}_box_w"], r[f"{who}_box_h"])


def render(rows, spec, threshold=None) -> str:
    threshold = spec.threshold if threshold is None else threshold
    rows = list(rows)
    crops = Crops([(r["probe_path"], _boxes(r, "probe")) for r in rows]
                  + [(r["hit_image_path"], _boxes(r, "hit")) for r in rows]).make()
    names = short_names([r["probe_path"] for r in rows] + [r["hit_image_path"] for r in rows])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>facebeam query report</title>"
             f"<style>{STYLE}</style></head><body><h1>facebeam query report</h1>"
             f"<p>model {html.escape(spec.model)} / detector {html.escape(spec.detector)}, {spec.metric} "
             f"distance, same person at &le; {threshold:.4f}</p>"]
    def key(r):
        return (r["probe_path"], r["probe_face_index"])
    for (path, face), group in itertools.groupby(sorted(rows, key=lambda r: (*key(r), r["rank"])), key=key):
        group = list(group)
        first = group[0]
        label = f"<br>label: {html.escape(first['top_label'])}" if first.get("top_label") else "<br>no label"
        figs = [_figure("query", crops.uri(path, _boxes(first, "probe")),
                        f"{html.escape(names[path])} #{face}{label}")]
        for r in group:
            verdict = "same" if r["same_person"] else "diff"
            hit_label = f"<br>{html.escape(r['hit_label'])}" if r.get("hit_label") else ""
            caption = (f"{r['rank']}. {html.escape(names[r['hit_image_path']])} #{r['hit_face_index']}{hit_label}<br>"
                       f"d={r['distance']:.3f} {'same' if r['same_person'] else 'different'}")
            figs.append(_figure(verdict, crops.uri(r["hit_image_path"], _boxes(r, "hit")), caption))
        parts.append(f'<div class="probe">{"".join(figs)}</div>')
    parts.append("</body></html>")
    return "".join(parts)


def write(path: str, rows, spec, threshold=None) -> None:
    with FileSystems.create(path) as f:
        f.write(render(rows, spec, threshold).encode())
