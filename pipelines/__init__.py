"""facebeam jobs: each module is a Beam pipeline or a local tool behind `facebeam <command>`."""
import logging


class _DropBeamImportNoise(logging.Filter):
    """apache_beam logs 'apitools not found' on the root logger at import when the GCP extras are absent."""

    def filter(self, record):
        return not str(record.msg).startswith("apitools not found")


# Installed before any job imports apache_beam; the root logger may not have handlers yet,
# so the filter sits on the logger itself.
logging.getLogger().addFilter(_DropBeamImportNoise())
