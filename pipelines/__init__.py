"""facebeam jobs: each module is a Beam pipeline or a local tool behind `facebeam <command>`."""
import logging


class _DropBeamNoise(logging.Filter):
    """Beam's warnings about its own optional parts, on the root logger: 'apitools not found' at import when the
    GCP extras are absent, and 'Resource module is not available' from RunInference on a cluster's workers
    (relayed to the launcher), whose optional model manager needs torch. Neither is the user's concern."""

    NOISE = ("apitools not found", "Resource module is not available")

    def filter(self, record):
        try:
            text = record.getMessage()  # a worker's message arrives as "%s" with the text as its argument
        except (TypeError, ValueError):
            return True
        return not text.startswith(self.NOISE)


# Installed before any job imports apache_beam; the root logger may not have handlers yet,
# so the filter sits on the logger itself.
logging.getLogger().addFilter(_DropBeamNoise())
