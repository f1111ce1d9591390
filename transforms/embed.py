"""EmbedImages: image paths -> face rows + error rows, every image accounted for."""
import apache_beam as beam
from apache_beam import typehints
from apache_beam.ml.inference.base import RunInference

from facebeam.transforms import images, metrics, progress, records
from facebeam.transforms.faces import DEFAULT_CLOSER, DEFAULT_TURNS, FaceModelHandler, no_face_words
from facebeam.transforms.progress import EMBED as PROGRESS
from facebeam.transforms.sources import DEFAULT_MAX_FILE_BYTES, shown
from facebeam.transforms.spec import EmbeddingSpec


def count_failed(reason: str, path: str | None = None, examples: metrics.Examples | None = None) -> None:
    metrics.count(metrics.IMAGES_SEEN)
    metrics.count(metrics.failed_name(reason))
    PROGRESS.add(images=1, failed=1)
    if path and examples is not None:  # a few, for the result line: the dead letters hold every one
        examples.note(metrics.FAILED_PATHS + reason, shown(path))


class ReadAndDecode(beam.DoFn):
    """Path -> DecodedImage, or an error row tagged 'errors' with a stable reason."""

    def __init__(self, spec: EmbeddingSpec, max_pixels: int, max_file_bytes: int):
        self._spec, self._max_pixels, self._max_file_bytes = spec, max_pixels, max_file_bytes
        self._progress = progress.shared_folder()

    def setup(self):
        PROGRESS.share_into(self._progress)
        self._examples = metrics.Examples()

    def process(self, element):
        # Timed without the yield: downstream stages are fused and run inside it.
        with metrics.stage_timer(metrics.STAGE_DECODE):
            out = list(self._read_and_decode(*element))
        yield from out

    def _read_and_decode(self, path, size):
        from facebeam.transforms.sources import read_bytes

        if size is not None and size > self._max_file_bytes:
            yield self._fail(path, "too_large", f"file is {size} bytes, over the limit of {self._max_file_bytes}", "read")
            return
        try:
            data, sha = read_bytes(path, self._max_file_bytes)
        except ValueError as e:
            yield self._fail(path, "too_large", str(e), "read")
            return
        except OSError as e:
            yield self._fail(path, "unreadable", f"{type(e).__name__}: {e}", "read")
            return
        # The chip path decodes a JPEG only as large as detection needs; every page of a TIFF is an image.
        for page in images.decode_pages(path, data, sha, self._max_pixels, self._spec.detect_max_side,
                                        draft=self._spec.align_mode == "chip"):
            yield self._fail(path, page.reason, str(page), page.stage, page.sha256) \
                if isinstance(page, images.ImageError) else page

    def _fail(self, path, reason, message, stage, sha=None):
        count_failed(reason, path, self._examples)
        return beam.pvalue.TaggedOutput("errors", records.error_row(path, reason, message, stage, self._spec, sha))


class ToRows(beam.DoFn):
    """ImageFaces -> one row per face, or one error row when there is none."""

    def __init__(self, spec: EmbeddingSpec, labeler=None, closer: str = DEFAULT_CLOSER):
        self._spec, self._labeler, self._closer = spec, labeler, closer
        self._progress = progress.shared_folder()

    def setup(self):
        PROGRESS.share_into(self._progress)
        self._examples = metrics.Examples()

    def process(self, result):
        with metrics.stage_timer(metrics.STAGE_ROWS):
            out = list(self._rows(result))
        yield from out

    def _rows(self, result):
        if result.error:
            reason, message = result.error
            count_failed(reason, result.path, self._examples)
            yield beam.pvalue.TaggedOutput("errors", records.error_row(
                result.path, reason, message, "detect", self._spec, result.sha256))
            return
        if not result.faces:
            count_failed("no_face", result.path, self._examples)
            yield beam.pvalue.TaggedOutput("errors", records.error_row(
                result.path, "no_face", no_face_words(self._spec, result.width, result.height, self._closer), "detect",
                self._spec, result.sha256))
            return
        metrics.count(metrics.IMAGES_SEEN)
        metrics.count(metrics.IMAGES_EMBEDDED)
        metrics.count(metrics.FACES, len(result.faces))
        PROGRESS.add(images=1, embedded=1, faces=len(result.faces))
        label = self._labeler(result.path, result.sha256) if self._labeler else None
        if label:
            metrics.count(metrics.FACES_LABELED, len(result.faces))
        yield from records.face_rows(result, self._spec, label)


def _count_failed(reason):
    examples = metrics.Examples()
    return lambda row: count_failed(reason, row["image_path"], examples)


def _dead_letter_row(spec, reason, stage):
    examples = metrics.Examples()  # unpickled afresh on each worker of each job

    def convert(element_and_error):
        element, (exc_type, exc_repr, _tb) = element_and_error
        path = element[0] if isinstance(element, tuple) else getattr(element, "path", str(element))
        count_failed(reason, path, examples)
        return records.error_row(path, reason, f"{exc_type}: {exc_repr}", stage, spec, getattr(element, "sha256", None))
    return convert


@beam.typehints.with_input_types(tuple)
class EmbedImages(beam.PTransform):
    """(path, size) -> {'faces': face rows, 'errors': error rows}."""

    def __init__(self, spec: EmbeddingSpec, max_pixels: int = images.DEFAULT_MAX_PIXELS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_batch_size: int = 4, labeler=None,
                 turns: str = DEFAULT_TURNS, closer: str = DEFAULT_CLOSER):
        super().__init__()
        self._spec, self._max_pixels, self._max_file_bytes = spec, max_pixels, max_file_bytes
        self._max_batch_size, self._labeler, self._turns, self._closer = max_batch_size, labeler, turns, closer

    def expand(self, paths):
        spec = self._spec
        # The "errors" tag is declared so with_exception_handling's own "bad" tag is not the only one.
        decoded = paths | "ReadAndDecode" >> beam.ParDo(
            ReadAndDecode(spec, self._max_pixels, self._max_file_bytes)
        ).with_output_types(typehints.Any, errors=dict).with_exception_handling().with_outputs(
            "errors", main="images")

        inferred, failed = decoded["images"] | "Embed" >> RunInference(
            FaceModelHandler(spec, self._max_batch_size, self._turns, self._closer)).with_exception_handling()

        rows = inferred | "ToRows" >> beam.ParDo(ToRows(spec, self._labeler, self._closer)).with_outputs("errors", main="faces")

        failed_batches = (
            failed.failed_inferences
            | "UnbatchFailed" >> beam.FlatMap(lambda batch_err: [(img, batch_err[1]) for img in batch_err[0]])
            | "FailedInference" >> beam.Map(lambda e: records.error_row(
                e[0].path, "inference_error", repr(e[1]), "represent", spec, e[0].sha256)))
        _ = failed_batches | "CountFailedInference" >> beam.Map(_count_failed("inference_error"))

        errors = (
            decoded["errors"],
            decoded["bad"] | "DecodeCrashed" >> beam.Map(_dead_letter_row(spec, "internal_error", "decode")),
            rows["errors"],
            failed_batches,
        ) | "AllErrors" >> beam.Flatten()
        return {"faces": rows["faces"], "errors": errors}


class EmbedInputs(beam.PTransform):
    """Input patterns -> {'faces', 'errors'[, 'moved', 'replaced']}: list on the workers, drop repeats, skip what is
    done, embed.

    `skip` (manifest.SkipDone: (path, size) pairs -> {'new', 'moved', 'replaced'}) leaves out photos a
    backfill has already done, and finds those that moved or were replaced in place (manifest.py);
    `labeler` overrides the one `inputs.label_from` names; `turns` (faces.TURNS) says when turned
    copies of a photo are tried, `closer` (faces.CLOSER) when a closer look is.
    """

    def __init__(self, inputs, spec: EmbeddingSpec, skip=None, labeler=None, turns: str = DEFAULT_TURNS,
                 closer: str = DEFAULT_CLOSER):
        super().__init__()
        self._inputs, self._spec, self._skip, self._labeler = inputs, spec, skip, labeler
        self._turns, self._closer = turns, closer

    def expand(self, p):
        from facebeam.transforms import labels, sources

        inputs = self._inputs
        since = sources.parse_since(inputs.since) if inputs.since else None
        paths = (p
                 | "Inputs" >> beam.Create(list(inputs.patterns))
                 | "Expand" >> beam.ParDo(sources.ExpandInputs(since, inputs.follow_symlinks))
                 | "Distinct" >> beam.Distinct())
        changes = {}
        if self._skip is not None:
            kept = paths | "SkipDone" >> self._skip
            paths, changes = kept["new"], {k: kept[k] for k in ("moved", "replaced")}
        # Even shares: Flink runs a Reshuffle as a round-robin rebalance and Spark as a repartition;
        # Distinct's hash split alone left two workers 141 and 159 of 300 photos.
        paths = paths | "Spread" >> beam.Reshuffle()
        out = paths | "EmbedImages" >> EmbedImages(
            self._spec, max_pixels=inputs.max_pixels, max_file_bytes=inputs.max_file_bytes,
            max_batch_size=inputs.batch_size, turns=self._turns, closer=self._closer,
            labeler=self._labeler or labels.labeler_from(inputs.label_from, inputs.patterns))
        return {**out, **changes}
