"""facebeam's embeddings equal DeepFace.represent's where no downscaling happens."""

import numpy as np

from facebeam.pipelines import embed
from tests.helpers import job, read_rows, sample_images
from facebeam.transforms import weights
from facebeam.transforms.spec import EmbeddingSpec


def small_photos():
    from PIL import Image

    limit = EmbeddingSpec().detect_max_side
    return [p for p in sample_images() if max(Image.open(p).size) <= limit]


def test_matches_deepface_represent_on_small_photos(tmp_path):
    photos = small_photos()
    assert len(photos) >= 8, photos
    listing = tmp_path / "small.txt"
    listing.write_text("\n".join(photos))
    job(embed, ["--input", str(listing), "--output", str(tmp_path / "out")])
    ours = read_rows(str(tmp_path / "out" / "embeddings"))

    weights.seed()
    from deepface import DeepFace

    compared = 0
    for path in photos:
        theirs = DeepFace.represent(path, model_name="Dlib", detector_backend="dlib")
        mine = {(r["box_x"], r["box_y"], r["box_w"], r["box_h"]): r for r in ours if r["image_path"] == path}
        assert len(mine) == len(theirs), path
        for face in theirs:
            a = face["facial_area"]
            row = mine[(a["x"], a["y"], a["w"], a["h"])]
            np.testing.assert_allclose(row["embedding"], face["embedding"], rtol=0, atol=1e-6)
            compared += 1
    assert compared >= len(photos)
