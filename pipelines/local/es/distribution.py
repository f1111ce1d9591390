"""The Elasticsearch server: Elastic's `integ-test-zip` from Maven Central, unpacked once.

Fetched with `mvn dependency:copy` into `<cache>/downloads/`, unpacked into
`<cache>/elasticsearch-<version>/` under a lock (one unpacker at a time); the cache is
`facebeam.transforms.home.cache_dir()`. `check_java` finds a Java the version runs on.
"""
import logging
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional

from facebeam.pipelines.local import toolkit
from facebeam.pipelines.local.es.layout import DEFAULT_VERSION, EsLocalError

log = logging.getLogger(__name__)
ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
MAVEN_TIMEOUT = 900.0


def check_java(version: str) -> str:
    """The Java home to run `version` with (ES_JAVA_HOME, then JAVA_HOME, then `java` on PATH);
    fails clearly if that Java is too old."""
    es_major = int(version.split(".")[0])
    java = toolkit.find_java(17 if es_major <= 8 else 21, purpose=f"Elasticsearch {version}",
                             home_vars=("ES_JAVA_HOME", "JAVA_HOME"), error=EsLocalError,
                             hint="Set ES_JAVA_HOME to a newer JDK")
    if es_major != 8:
        log.warning("Elasticsearch %s: facebeam's Python client is 8.x and expects an 8.x server", version)
    return java.home


def fetch_distribution(version: str = DEFAULT_VERSION, cache: Optional[Path] = None) -> Path:
    """ES_HOME of the unpacked integ-test-zip, fetched through Maven on first use."""
    cache = Path(cache or toolkit.cache_dir())
    target = cache / f"elasticsearch-{version}"
    if (target / "bin" / "elasticsearch").is_file():
        return target
    deadline = time.monotonic() + MAVEN_TIMEOUT
    with toolkit.file_lock(cache / ".lock", deadline=deadline, error=EsLocalError,  # one unpacker at a time
                           what=f"unpacking Elasticsearch {version} into {cache}"):
        if (target / "bin" / "elasticsearch").is_file():
            return target
        zip_path = _maven_fetch(version, cache / "downloads", deadline)
        log.info("unpacking %s into %s", zip_path.name, cache)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            _extract_zip(zip_path, tmp)
            inner = tmp / f"elasticsearch-{version}"
            if not (inner / "bin" / "elasticsearch").is_file():
                raise EsLocalError(f"{zip_path} has no elasticsearch-{version}/bin/elasticsearch")
            inner.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _maven_fetch(version: str, out_dir: Path, deadline: float) -> Path:
    zip_path = out_dir / f"elasticsearch-{version}.zip"
    if zip_path.is_file():
        return zip_path
    artifact = ARTIFACT.format(version=version)
    log.info("fetching %s with Maven (cached in ~/.m2 afterwards)", artifact)
    ok, out = toolkit.maven(["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={out_dir}"],
                            deadline, f"the Elasticsearch server {artifact}", error=EsLocalError)
    if not ok or not zip_path.is_file():
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise EsLocalError(f"Maven could not fetch {artifact} ({toolkit.maven_reason(out)}):\n{tail}")
    return zip_path


def _extract_zip(zip_path: Path, dest: Path):
    """Unzip keeping the executable bits (zipfile alone drops them)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                path.chmod(mode)

