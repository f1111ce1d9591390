"""The "deepface" spec's embeddings equal DeepFace.represent's where no downscaling happens.

The default spec ("chip", dlib's own face chips) is a different embedding space; the
deepface-exact one stays available by name (`EmbeddingSpec.preset("deepface")`) and is
tested here explicitly.
"""

import numpy as np

from facebeam.pipelines import embed
from facebeam.transforms import weights
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import read_rows, sample_images

DEEPFACE = EmbeddingSpec.preset("deepface")


def small_photos():
    from PIL import Image

    limit = DEEPFACE.detect_max_side
    return [p for p in sample_images() if max(Image.open(p).size) <= limit]


def test_matches_deepface_represent_on_small_photos(tmp_path):
    photos = small_photos()
    assert len(photos) >= 8, photos
    listing = tmp_path / "small.txt"
    listing.write_text("\n".join(photos))
    embed.run(embed.EmbedConfig(Inputs((str(listing),)), str(tmp_path / "out"), DEEPFACE))
    ours = read_rows(str(tmp_path / "out" / "embeddings"))
    assert {r["spec_id"] for r in ours} == {DEEPFACE.spec_id}

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
