"""facebeam: photos to a searchable face index with Apache Beam, deepface and Elasticsearch."""
from setuptools import find_packages, setup

setup(
    name="facebeam",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    # The folders keep their short names in the repo; installed, they live under `facebeam.`
    # so generic names like `pipelines` never clash with other packages in site-packages.
    package_dir={"facebeam.pipelines": "pipelines", "facebeam.transforms": "transforms"},
    packages=["facebeam." + p for p in find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*"])],
    # compiled by `facebeam flink|spark up` (pipelines/local/job_server.py)
    package_data={"facebeam.pipelines.runner": ["*.java"]},
    install_requires=[
        "apache-beam==2.77.0",
        "deepface==0.0.103",
        "dlib-bin==20.0.1.post1",
        "face_recognition_models==0.3.0",
        # runs the Dlib ResNet (transforms/faces.py OnnxResnet); deepface requires it too, same lock pin.
        "onnxruntime>=1.13",
        "elasticsearch>=8.19,<9",
        # kNN requests and responses (transforms/knn.py; `facebeam bench query` levers: 0-1 ms less per single
        # query than the stdlib's json, never more), and the bench's bulk vectors.
        "orjson>=3.9",
        # the embedded HNSW index (transforms/ann.py: memory-mapped loads need IO_FLAG_MMAP_IFC) and the
        # Redis identity store (transforms/redis_store.py).
        "faiss-cpu>=1.12,<2",
        "redis>=5,<9",
        # persons clustering methods (transforms/persons/clustering.py): Leiden over igraph, and Infomap.
        "igraph>=0.11,<2",
        "leidenalg>=0.10,<1",
        "infomap>=2.7,<3",
        "pyarrow>=16",
        "numpy>=1.26",
        "pillow>=11.1",  # AVIF in Pillow's own wheels
        # HEIF/HEIC photos (phones' default format; transforms/images.py).
        "pillow-heif>=0.18",
        # deepface 0.0.103 imports werkzeug without declaring it.
        "werkzeug>=3",
        # the local services' plumbing (pipelines/local): locks, process checks, probes, deadlines.
        "filelock>=4.2,<5",  # on_acquired, preserve_lock_file (jobs.lock_output)
        "psutil>=5.9",
        "requests>=2.31",
        "tenacity>=8.2",
    ],
    # bench: the recall-vs-QPS plot (matplotlib), the load anchor (hnswlib: bench index builds the same
    # vectors with it, the rate Elasticsearch's load is held to).
    extras_require={"test": ["pytest>=8"], "bench": ["matplotlib>=3.8", "hnswlib>=0.8,<1"]},
    entry_points={"console_scripts": ["facebeam=facebeam.pipelines.cli:entry"]},
)
