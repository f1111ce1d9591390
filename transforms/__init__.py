"""facebeam's reusable Beam transforms and the pieces they share."""
