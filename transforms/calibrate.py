"""The same-person threshold, fitted to a collection of labeled faces, and carried to queries.

Faces: the largest face of every labeled photo in an embed run's shards. Pairs: every two of
them (same person when their labels match), or the pairs a CSV lists (the sample's
`face-recognition-pivot.csv` format: file_x, file_y, decision Yes/No). For each pair the
spec's distance is computed; a threshold t calls a pair "same" when distance <= t.

- accuracy at the current threshold (the spec's, deepface's tuned value, or a carried one);
- the best threshold: scanned over the midpoints between sorted pair distances, the one with
  the highest accuracy (ties: the middle of the best run);
- how it generalizes: photos are split into folds; a threshold is fitted on the pairs among
  the other folds' photos and scored on the pairs that touch the held-out photos (unseen),
  and the current threshold is scored on the same held-out pairs;
- the threshold kept: the fitted one when it did better than the current one on those unseen
  pairs, else the current one (a fit to a handful of pairs, or one that only moves
  along a flat stretch of the curve, is noise; `adopt="always"` keeps the fit regardless).

The result is a JSON (`calibration.json`) and a ROC/DET picture. The threshold travels in
`<shards>/calibration.json` and/or the index's `_meta` (`facebeam.calibration`); it is not
part of the embedding spec, so the spec id does not change. `query` and `search` use it for
every same-person verdict and for the label decision; `--threshold` overrides it.
"""
import json
import logging
import os
import posixpath

import numpy as np

from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)
FILE = "calibration.json"
PICTURE = "roc.png"


class CalibrationError(UserError, ValueError):
    """Not enough labeled faces or pairs to fit a threshold."""


# --- faces and pairs ---------------------------------------------------------------------
def labeled_faces(rows, labeler=None) -> dict:
    """Face rows -> {image_path: (label, embedding)} for the largest face of each labeled photo."""
    best = {}
    for r in rows:
        label = labeler(r["image_path"], r["image_sha256"]) if labeler else r.get("label")
        if not label:
            continue
        area = r["box_w"] * r["box_h"]
        if r["image_path"] not in best or area > best[r["image_path"]][0]:
            best[r["image_path"]] = (area, label, np.asarray(r["embedding"], dtype=np.float32))
    return {path: (label, vec) for path, (_, label, vec) in best.items()}


def largest_faces(rows) -> dict:
    """Face rows -> {image_path: embedding} of each photo's largest face."""
    best = {}
    for r in rows:
        area = r["box_w"] * r["box_h"]
        if r["image_path"] not in best or area > best[r["image_path"]][0]:
            best[r["image_path"]] = (area, np.asarray(r["embedding"], dtype=np.float32))
    return {path: vec for path, (_, vec) in best.items()}


def all_pairs(faces: dict) -> list:
    """{path: (label, vec)} -> [(path_a, path_b, same)] for every two photos."""
    paths = sorted(faces)
    return [(a, b, faces[a][0] == faces[b][0]) for i, a in enumerate(paths) for b in paths[i + 1:]]


def csv_pairs(csv_path: str, paths) -> list:
    """Pairs from a CSV (file_x, file_y, decision Yes/No) matched to photos by full path, else by file name."""
    by_name = {}
    for p in paths:
        by_name.setdefault(posixpath.basename(p.replace(os.sep, "/")), []).append(p)

    def find(name):
        if name in paths:
            return name
        found = by_name.get(posixpath.basename(name.replace(os.sep, "/")), [])
        return found[0] if len(found) == 1 else None

    from facebeam.transforms import labels

    out, missing = [], 0
    for x, y, same in labels.read_pairs(csv_path, by_name=False):
        a, b = find(x), find(y)
        if a is None or b is None:
            missing += 1
            continue
        out.append((a, b, same))
    if missing:
        log.warning("%d pair(s) in %s name photos with no face in the shards; skipped", missing, csv_path)
    return out


def pair_distances(pairs, vectors: dict, spec) -> np.ndarray:
    a = np.stack([vectors[x] for x, _, _ in pairs])
    b = np.stack([vectors[y] for _, y, _ in pairs])
    return np.asarray(spec.distance(a, b), dtype=np.float64)


# --- fitting ----------------------------------------------------------------------------------
def accuracy(d: np.ndarray, same: np.ndarray, t: float) -> float:
    return float(np.mean((d <= t) == same)) if len(d) else float("nan")


def best_threshold(d: np.ndarray, same: np.ndarray) -> tuple:
    """(threshold, accuracy) maximizing accuracy over the midpoints between sorted distances."""
    order = np.argsort(d, kind="stable")
    ds, ss = d[order], same[order].astype(bool)
    # Cut after position i (0..n): pairs [0, i) called same.
    correct = np.concatenate([[0], np.cumsum(ss)]) + (np.sum(~ss) - np.concatenate([[0], np.cumsum(~ss)]))
    cuts = np.concatenate([[ds[0] - 1e-3], (ds[:-1] + ds[1:]) / 2, [ds[-1] + 1e-3]])
    valid = np.concatenate([[True], ds[:-1] < ds[1:], [True]])  # no cut between equal distances
    correct = np.where(valid, correct, -1)
    best = np.flatnonzero(correct == correct.max())
    i = best[len(best) // 2]
    return float(cuts[i]), float(correct[i] / len(d))


def cross_validate(pairs, d: np.ndarray, folds: int = 5, seed: int = 0, current: float | None = None) -> dict:
    """Fit on pairs among the other folds' photos, score on pairs touching the held-out photos;
    `current` is scored on the same held-out pairs (`current_accuracy`), a paired comparison."""
    photos = sorted({p for x, y, _ in pairs for p in (x, y)})
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(photos, rng.permutation(len(photos)) % folds))
    same = np.array([s for _, _, s in pairs], dtype=bool)
    scores, thresholds, right, total, current_right = [], [], 0, 0, 0
    for k in range(folds):
        held = np.array([fold_of[x] == k or fold_of[y] == k for x, y, _ in pairs])
        if held.all() or not held.any() or same[~held].all() or not same[~held].any():
            continue
        t, _ = best_threshold(d[~held], same[~held])
        ok = (d[held] <= t) == same[held]
        scores.append(float(ok.mean()))
        thresholds.append(round(t, 4))
        right, total = right + int(ok.sum()), total + int(held.sum())
        if current is not None:
            current_right += int(((d[held] <= current) == same[held]).sum())
    cv = {"folds": folds, "fold_thresholds": thresholds, "fold_accuracy": [round(s, 4) for s in scores],
          "accuracy": round(right / total, 4) if total else None, "seed": seed, "held_out_pairs": total}
    if current is not None:
        cv["current_accuracy"] = round(current_right / total, 4) if total else None
    return cv


def roc(d: np.ndarray, same: np.ndarray) -> dict:
    """True/false positive rates as the threshold sweeps over every distance."""
    ts = np.unique(np.concatenate([[0.0], d]))
    pos, neg = max(int(same.sum()), 1), max(int((~same).sum()), 1)
    tpr = np.array([np.sum((d <= t) & same) / pos for t in ts])
    fpr = np.array([np.sum((d <= t) & ~same) / neg for t in ts])
    return {"thresholds": ts, "tpr": tpr, "fpr": fpr, "auc": float(np.trapezoid(tpr, fpr))}


ADOPT = ("if-better", "always")


def choose(fitted: float, current: float, cv: dict, adopt: str = "if-better") -> tuple:
    """(threshold kept, "fit" or "current", why): the fit when it scored better than the current
    threshold on the same unseen pairs (or `adopt="always"`), else the current one: a change
    needs evidence that it helps, and a tie is none."""
    mine, theirs = cv.get("accuracy"), cv.get("current_accuracy")
    if adopt == "always":
        return fitted, "fit", f"the fit {fitted:.4f} (--adopt always)"
    if mine is None or theirs is None:
        return current, "current", (f"kept {current:.4f}: too few photos to test the fit {fitted:.4f} on unseen "
                                    "ones (--adopt always takes it)")
    if mine > theirs:
        return fitted, "fit", f"the fit {fitted:.4f}: {mine:.4f} on unseen photos, {current:.4f} scored {theirs:.4f}"
    return current, "current", (f"kept {current:.4f}: on unseen photos the fit {fitted:.4f} scored {mine:.4f}, no "
                                f"better than {current:.4f}'s {theirs:.4f} (--adopt always takes it)")


def fit(pairs, vectors: dict, spec, current: float, folds: int = 5, adopt: str = "if-better") -> dict:
    if not pairs:
        raise CalibrationError("no labeled pairs: label faces (--label-from, or labels stored in the shards) "
                               "or give --pairs CSV")
    same = np.array([s for _, _, s in pairs], dtype=bool)
    if same.all() or not same.any():
        raise CalibrationError(f"need both same-person and different-person pairs; got {int(same.sum())} same, "
                               f"{int((~same).sum())} different")
    d = pair_distances(pairs, vectors, spec)
    t, acc = best_threshold(d, same)
    curve = roc(d, same)
    def at(thr):
        return {"threshold": round(thr, 4), "accuracy": round(accuracy(d, same, thr), 4),
                          "true_positive_rate": round(float(np.mean(d[same] <= thr)), 4),
                          "false_positive_rate": round(float(np.mean(d[~same] <= thr)), 4)}
    cv = cross_validate(pairs, d, folds, current=current)
    kept, adopted, why = choose(round(t, 4), round(current, 4), cv, adopt)
    return {
        "spec_id": spec.spec_id, "metric": spec.metric, "model": spec.model,
        "photos": len({p for x, y, _ in pairs for p in (x, y)}), "pairs": len(pairs),
        "same_pairs": int(same.sum()), "different_pairs": int((~same).sum()),
        "current": at(current), "best": at(t), "threshold": kept, "adopted": adopted,
        "why": why, "cross_validated": cv, "roc_auc": round(curve["auc"], 4),
        "_distances": d, "_same": same, "_roc": curve,
    }


# --- the picture -------------------------------------------------------------------------------
def plot(path: str, result: dict) -> None:
    """ROC (left) and DET (right, miss rate vs false-match rate, log axes) with both thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, _d, _same = result["_roc"], result["_distances"], result["_same"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=100)
    a.plot(curve["fpr"], curve["tpr"], color="#36c", lw=2, label=f"ROC (AUC {curve['auc']:.3f})")
    a.plot([0, 1], [0, 1], color="#aaa", ls="--", lw=1)
    eps = 1e-4
    b.plot(np.maximum(curve["fpr"], eps), np.maximum(1 - curve["tpr"], eps), color="#36c", lw=2, label="DET")
    for key, colour in (("current", "#c33"), ("best", "#2a2")):
        m = result[key]
        a.scatter([m["false_positive_rate"]], [m["true_positive_rate"]], color=colour, s=60, zorder=3,
                  label=f"{key}: t={m['threshold']:.3f}, accuracy {m['accuracy']:.3f}")
        b.scatter([max(m["false_positive_rate"], eps)], [max(1 - m["true_positive_rate"], eps)], color=colour, s=60,
                  zorder=3, label=f"{key}: t={m['threshold']:.3f}")
    a.set(xlabel="false-match rate (different people called same)", ylabel="true-match rate",
          title=f"{result['model']} {result['metric']}: {result['pairs']} pairs, {result['photos']} photos")
    b.set(xscale="log", yscale="log", xlabel="false-match rate", ylabel="miss rate (same person called different)",
          title="DET")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right" if ax is a else "upper right", fontsize=8)
    fig.tight_layout()
    import io

    from facebeam.transforms import shards

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    shards.write_whole(path, buf.getvalue())


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


# --- carrying the threshold ----------------------------------------------------------------------
def save(folder: str, result: dict) -> str:
    from facebeam.transforms import shards

    path = shards_join(folder, FILE)
    shards.write_json(path, public(result))
    return path


def shards_join(folder: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(folder, name)


def load(folder: str):
    """The calibration saved in `folder`, or None."""
    from apache_beam.io.filesystems import FileSystems

    path = shards_join(folder, FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode())


def store_in_index(client, concrete: str, result: dict) -> None:
    """Keep the calibration in the index's `_meta` next to the spec (the mapping and spec id are unchanged)."""
    mapping = client.indices.get_mapping(index=concrete).body[concrete]["mappings"]
    meta = dict(mapping.get("_meta") or {})
    meta["facebeam"] = {**meta.get("facebeam", {}), "calibration": public(result)}
    client.indices.put_mapping(index=concrete, meta=meta)


def from_index(client, concrete: str):
    mapping = client.indices.get_mapping(index=concrete).body[concrete]["mappings"]
    return ((mapping.get("_meta") or {}).get("facebeam") or {}).get("calibration")


def choose_threshold(spec, override=None, carried=None, where: str = None) -> tuple:
    """(threshold, where it came from): --threshold, else a carried calibration of this spec, else the spec's."""
    if override is not None:
        return float(override), "--threshold"
    if carried:
        if carried.get("spec_id") != spec.spec_id:
            log.warning("ignoring the calibration in %s: it was fitted for spec %s, not %s", where,
                        carried.get("spec_id"), spec.spec_id)
        else:
            return float(carried["threshold"]), f"calibration in {where}"
    return spec.threshold, f"{spec.model}/{spec.metric} default"
