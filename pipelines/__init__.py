"""facebeam jobs: each module is a Beam pipeline or a local tool behind `facebeam <command>`."""
