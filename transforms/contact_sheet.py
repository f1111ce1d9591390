"""A self-contained HTML contact sheet: one row per person, largest first.

Each row: the representative face (the face nearest the person's centre), the name and size, and a
strip of member crops (nearest the centre first). Memory stays bounded: only the faces shown are
cropped, each photo is decoded once and dropped once its crops are cut, and a crop is a small
JPEG (REP_PX / STRIP_PX square) inlined as a data URI.
"""
import base64
import html
import io

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import images, persons

REP_PX, STRIP_PX = 112, 64
STYLE = """
body{font:14px system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
.person{display:flex;gap:12px;align-items:center;margin:8px 0;padding:8px;background:#fff;border:1px solid #ddd}
.rep img{width:112px;height:112px;border:3px solid #36c;display:block}
.meta{width:220px;word-break:break-all}.name{font-size:16px;font-weight:600}
.strip{display:flex;flex-wrap:wrap;gap:4px}.strip img{width:64px;height:64px;display:block;border:1px solid #bbb}
.singleton .rep img{border-color:#bbb}
"""


def crop_uri(bgr, box, px: int) -> str:
    from PIL import Image

    x, y, w, h = (int(v) for v in box)
    m = int(0.2 * max(w, h))
    crop = bgr[max(0, y - m):y + h + m, max(0, x - m):x + w + m, ::-1]
    im = Image.fromarray(crop.copy())
    im.thumbnail((px * 4, px * 4))
    im = im.resize((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def crops(wanted: dict) -> dict:
    """{(face_id, px): (image_path, box)} -> {(face_id, px): data URI}; one decode per photo."""
    by_photo = {}
    for key, (path, box) in wanted.items():
        by_photo.setdefault(path, []).append((key, box))
    out = {}
    for path, items in sorted(by_photo.items()):
        try:
            with FileSystems.open(path) as f:
                bgr = images.decode(path, f.read(), "", detect_max_side=10**9).bgr
        except Exception:  # noqa: BLE001 - a photo gone since: its faces show as missing, the sheet still renders
            continue
        for key, box in items:
            out[key] = crop_uri(bgr, box, key[1])
        del bgr
    return out


def render(folder: str, max_persons: int = 200, strip: int = 12, singletons: bool = True) -> str:
    table = [r for r in persons.read_table(folder) if singletons or r["size"] > 1][:max_persons]
    shown = {r["person_id"] for r in table}
    members = {}
    for a in persons.read_assignments(folder):
        if a["person_id"] in shown:
            members.setdefault(a["person_id"], []).append(a)
    wanted = {}
    for r in table:
        box = (r["rep_box_x"], r["rep_box_y"], r["rep_box_w"], r["rep_box_h"])
        wanted[(r["representative_face_id"], REP_PX)] = (r["representative_image_path"], box)
        ms = sorted(members.get(r["person_id"], []), key=lambda a: (a["distance"] is None, a["distance"] or 0.0))
        members[r["person_id"]] = [a for a in ms if a["face_id"] != r["representative_face_id"]][:strip]
        for a in members[r["person_id"]]:
            wanted[(a["face_id"], STRIP_PX)] = (a["image_path"], (a["box_x"], a["box_y"], a["box_w"], a["box_h"]))
    uris = crops(wanted)
    total = sum(r["size"] for r in persons.read_table(folder))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>facebeam persons</title>"
             f"<style>{STYLE}</style></head><body><h1>facebeam persons</h1>"
             f"<p>{len(table)} persons shown, largest first; {total} faces in persons.</p>"]
    for r in table:
        rep = uris.get((r["representative_face_id"], REP_PX))
        name = html.escape(r["name"]) if r["name"] else "<i>unnamed</i>"
        strip_html = "".join(
            f'<img src="{uris[(a["face_id"], STRIP_PX)]}" alt="" title="{html.escape(a["image_path"].rsplit("/", 1)[-1])}">'
            for a in members[r["person_id"]] if (a["face_id"], STRIP_PX) in uris)
        cls = "person" + (" singleton" if r["size"] == 1 else "")
        rep_html = f'<img src="{rep}" alt="">' if rep else ""
        parts.append(
            f'<div class="{cls}"><div class="rep">{rep_html}</div>'
            f'<div class="meta"><div class="name">{name}</div><div>{r["size"]} face{"s" if r["size"] != 1 else ""}</div>'
            f'<div><code>{html.escape(r["person_id"])}</code></div></div><div class="strip">{strip_html}</div></div>')
    parts.append("</body></html>")
    return "".join(parts)


def write(path: str, folder: str, max_persons: int = 200) -> None:
    page = render(folder, max_persons)
    with FileSystems.create(path) as f:
        f.write(page.encode())
