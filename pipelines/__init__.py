"""facebeam jobs: each module is a Beam pipeline or a local tool behind `facebeam <command>`."""
import logging
import os

# gRPC reads GRPC_VERBOSITY once, when apache_beam first imports it, so a job's own setting came too late for
# the launcher: its INFO lines (such as a port's second loopback address refused) reached the user's terminal.
# Set here, before any job imports apache_beam; a user's own value wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


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
