"""A frozen Keras network run by TensorFlow Lite's XNNPACK CPU kernels: the fast inference runtime
for the pretrained encoders on the TensorFlow backend.

Why: on this 2-core CPU, EfficientNet-Lite0 runs at ~25-40 images/s through Keras (`predict_on_batch`,
TensorFlow's oneDNN kernels) and at ~100-108 images/s through TFLite with XNNPACK on 2 threads, with
the same outputs to ~1e-5 (measured 2026-11-30; `tests/test_image_encoder.py` pins the agreement).
The network was designed for this runtime (the "Lite" in its name). Quantised flatbuffers (int8,
see `convert` and `SettingsPrecision`) trade that agreement for speed: their encoders' versions say so.

The converted flatbuffer is cached on disk (`lite_path`), its file name keyed by a hash of the
weights it was made from, the TensorFlow version and the quantisation, under a stem the encoder
gives (its version), and written atomically; converting takes ~20-35 s, once, in a child process
(see `Conversion`; several at once: `side_by_side`). Other backends (JAX on the
GPU machine) keep the Keras model: `available()` says whether this runtime can be used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ml.config import usable_cpus

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "keras", "tflite")


def available() -> bool:
    """True when Keras runs on TensorFlow and TensorFlow ships the TFLite converter and interpreter."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    try:
        import tensorflow as tf

        return hasattr(tf, "lite") and hasattr(tf.lite, "Interpreter")
    except ImportError:  # pragma: no cover - the TensorFlow backend implies TensorFlow
        return False


def use_lite(runtime: str | None = None) -> bool:
    """Whether `runtime` (one of RUNTIMES; None: `Settings.encoder_runtime`) means TFLite here;
    "tflite" where it is unavailable fails."""
    if runtime is None:
        from ml.config import Settings

        runtime = Settings.from_env().encoder_runtime
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown encoder runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "keras":
        return False
    if runtime == "tflite" and not available():
        raise RuntimeError("the tflite encoder runtime needs the TensorFlow Keras backend")
    return available()


# How a flatbuffer's weights are quantised (`convert`): "none" (float32), "dynamic" (dynamic-range
# int8: int8 weights, activations quantised per batch at run time, no calibration data), "static"
# (full-integer int8: weights and activations, activation ranges from a calibration batch).
# Each with what is digested into the file name (float32 names stay what they were: no cached file is
# orphaned).
_QUANTIZATION_TAGS = {"none": b"", "dynamic": b"dynamic-range-int8", "static": b"full-integer-int8"}
QUANTIZATIONS = tuple(_QUANTIZATION_TAGS)


# The weights' precision of an encoder run by TFLite (a setting per encoder and text role).
PRECISIONS = ("int8", "float32")


class SettingsPrecision:
    """For an encoder class whose TFLite weights' precision is a setting: `effective_precision` and
    `cache_version`, the rule in one place. TFLite runs the precision asked for (one of PRECISIONS;
    default the `Settings` field named by `precision_setting`), Keras always the float32 network; the
    cache version is the class's `version`, "-" + `int8_tag` added for int8 (their vectors differ from
    float32's, so the two never share embedding-cache rows). Not in it: the TensorFlow version, which
    names the flatbuffer file; a converter that quantised differently after an upgrade would serve
    old int8 rows beside new ones, as far as the cache's re-encoding check lets it (cosine 0.99)."""

    version: str
    precision_setting: str  # the ml.config.Settings field
    precision_of: str  # what the error message calls it: "text", "image"
    int8_tag = "int8"  # the version's suffix for int8 (what else fixes the int8 vectors goes in it)

    @classmethod
    def effective_precision(cls, runtime: str, precision: str | None = None) -> str:
        """The weights' precision `runtime` ("tflite" or "keras") runs."""
        if precision is None:
            from ml.config import Settings

            precision = getattr(Settings.from_env(), cls.precision_setting)
        if precision not in PRECISIONS:
            raise ValueError(
                f"unknown {cls.precision_of} precision {precision!r}: expected one of {', '.join(PRECISIONS)}"
            )
        return precision if runtime == "tflite" else "float32"

    @classmethod
    def cache_version(cls, runtime: str | None = None, precision: str | None = None) -> str:
        """The version embeddings are cached and recorded under (`runtime`: None reads the settings,
        `use_lite`)."""
        if runtime is None:
            runtime = "tflite" if use_lite() else "keras"
        precision = cls.effective_precision(runtime, precision)
        return cls.version if precision == "float32" else f"{cls.version}-{cls.int8_tag}"


def lite_path(
    source: Path, folder: Path | None = None, stem: str | None = None, quantize: str = "none"
) -> Path:
    """Where the flatbuffer converted from the weights file `source` lives (in `folder`, default
    beside it): named by a hash of its bytes, the TensorFlow version and the quantisation (one of
    QUANTIZATIONS, see `convert`), so changed weights, a new converter or another precision never
    reuse a stale file. (A static flatbuffer also depends on its calibration batch: the caller's
    `stem` names that, as the image encoder's version does.)"""
    import tensorflow as tf

    digest = hashlib.sha1(source.read_bytes())
    digest.update(tf.__version__.encode())
    digest.update(_QUANTIZATION_TAGS[quantize])
    stem = stem or source.name.removesuffix(".weights.h5")
    return (folder or source.parent) / f"{stem}.{digest.hexdigest()[:16]}.tflite"


# The converter's own step, run in a child interpreter (see `convert`): reads a SavedModel, writes a
# flatbuffer. Self-contained: the child needs TensorFlow only (run with -P: not even this repository
# on its path). It dies with the process that started it (Linux: PR_SET_PDEATHSIG), so a worker
# killed at its hard time limit leaves no converter running on.
_CONVERT_SCRIPT = """
import sys
try:
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
import tensorflow as tf
saved, out, quantize = sys.argv[1], sys.argv[2], sys.argv[3]
converter = tf.lite.TFLiteConverter.from_saved_model(saved)
if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
if quantize == "static":  # activation ranges from the calibration batch, one row at a time
    import numpy as np

    calibration = np.load(sys.argv[4])
    converter.representative_dataset = lambda: ([calibration[k : k + 1]] for k in range(len(calibration)))
blob = converter.convert()
with open(out, "wb") as fh:
    fh.write(blob)
"""


def convert(model, quantize: str = "none", calibration: np.ndarray | None = None) -> bytes:
    """The Keras `model` (one input) as a TFLite flatbuffer, weights frozen in, quantised as
    `quantize` says (QUANTIZATIONS). "dynamic": XNNPACK runs the int8 matmuls of a transformer
    2.5-3x faster here; for EfficientNet-Lite0's convolutions it was slower (57 vs 100 images/s,
    measured). "static" needs `calibration`, a batch of the model's inputs: the network the "Lite"
    EfficientNets were designed for (ReLU6 bounds most activations), 2.4-3.3x float32's rate here
    (docs/HISTORY.md, session 24). Inputs and outputs stay float32 either way. See `Conversion`."""
    return Conversion(model, quantize, calibration).result()


class Conversion:
    """`convert`, started here and waited for by `result()`: the model is exported in this process,
    the converter runs in a child. Why a child: the converter is one C++ call that holds the GIL for
    seconds (1.8 s for EfficientNet-Lite0, 2.9 s for MiniLM, measured on an idle 2-core machine),
    and while it does no Python signal handler runs in ANY thread - Celery's soft time limit
    (SIGUSR1) would wait behind it until the hard limit kills the pool child. Waiting on a child is
    interruptible: the handler raises at once, and the child is killed on the way out (`cancel`).
    Its memory is the child's too. Costs the child's TensorFlow import and start (5-10 s measured)
    per conversion, once per cache. The child and the export run on one core each, so conversions
    started before any is waited for run side by side (`side_by_side`)."""

    def __init__(self, model, quantize: str = "none", calibration: np.ndarray | None = None) -> None:
        if quantize not in QUANTIZATIONS:
            raise ValueError(f"unknown quantisation {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
        if quantize == "static" and (calibration is None or not len(calibration)):
            raise ValueError("static quantisation needs a calibration batch")
        self.name = model.name
        self._lock = threading.Lock()  # the child's outcome is read, or the child cancelled, once
        self._spent = False
        self._child: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="lite-export-")
        try:
            tmp = Path(self._tmp.name)
            saved, self._out, self._err = tmp / "saved", tmp / "model.tflite", tmp / "stderr.txt"
            model.export(str(saved), format="tf_saved_model", verbose=False)
            cmd = [sys.executable, "-P", "-c", _CONVERT_SCRIPT, str(saved), str(self._out), quantize]
            if quantize == "static":
                np.save(tmp / "calibration.npy", np.asarray(calibration, np.float32))
                cmd.append(str(tmp / "calibration.npy"))
            with self._err.open("wb") as err:  # a file, not a pipe: nobody reads while it runs
                self._child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        except BaseException:
            self.cancel()
            raise

    def result(self) -> bytes:
        """The flatbuffer, once the child is done; RuntimeError with its stderr's tail if it failed
        (or if it was cancelled meanwhile). Interrupted (a signal's exception), the child is killed
        first."""
        try:
            code = self._child.wait()
        except BaseException:
            self.cancel()
            raise
        with self._lock:
            if self._spent:
                raise RuntimeError(f"TFLite conversion of {self.name} was cancelled (or already read)")
            try:
                if code != 0:
                    tail = "\n".join(self._err.read_text(errors="replace").strip().splitlines()[-15:])
                    raise RuntimeError(f"TFLite conversion of {self.name} failed ({code}):\n{tail}")
                return self._out.read_bytes()
            finally:
                self._spent = True
                self._tmp.cleanup()

    def cancel(self) -> None:
        """Kill the child (if still running), reap it and remove the export."""
        with self._lock:
            self._spent = True
            if self._child is not None:
                self._child.kill()
                self._child.wait()
            self._tmp.cleanup()


class Pending:
    """A flatbuffer `cached_flatbuffer` converts (`start`) inside `side_by_side`: `result()` waits
    for it, writes it to the cache and returns it (then the bytes, to every caller and thread).
    A conversion that failed, or was cancelled, is started again by the next `result()` (as a
    constructor that raised would be called again). `hint`: a line added to the converter's error
    (what setting avoids it)."""

    def __init__(
        self,
        path: Path,
        build: Callable[[], Any],
        quantize: str = "none",
        calibration: Callable[[], np.ndarray] | None = None,
        hint: str = "",
    ) -> None:
        self.path, self._build, self._quantize, self._calibration = path, build, quantize, calibration
        self._hint = hint
        self._blob: bytes | None = None
        self._conversion: Conversion | None = None
        self._lock = threading.Lock()

    def start(self) -> Conversion:
        """Start converting (`build()`'s model; `calibration()` for static quantisation)."""
        calibration = self._calibration() if self._calibration is not None else None
        self._conversion = Conversion(self._build(), self._quantize, calibration)
        return self._conversion

    def result(self) -> bytes:
        with self._lock:
            if self._blob is None:
                conversion = self._conversion or self.start()
                try:
                    blob = conversion.result()
                except RuntimeError as exc:  # the converter's own failure: say the way out
                    if not self._hint:
                        raise
                    raise RuntimeError(f"{exc}\n{self._hint}") from exc
                finally:
                    self._conversion = None  # done, failed or cancelled: spent
                _write_atomically(self.path, blob)
                log.info("converted %s to TFLite: %s", conversion.name, self.path)
                self._blob = blob
            return self._blob

    def cancel(self) -> None:
        """Kill the conversion under way, if any (a `result()` waiting on it raises; the next one
        starts again)."""
        conversion, self._conversion = self._conversion, None
        if conversion is not None:
            conversion.cancel()


_side_by_side = threading.local()  # .pending: the Pending conversions of the open `side_by_side`


@contextlib.contextmanager
def side_by_side():
    """Within the block, `cached_flatbuffer` starts each conversion and returns at once (a `Pending`,
    which `LiteModel` takes); at the end of the outermost block every one is waited for, so that
    after it all are cached as if made one by one. Several encoders built in the block convert side
    by side: each conversion is single-threaded (the export here, the converter in its child), so
    on 2 cores three of them (a cold cache's MiniLM float32 and int8, EfficientNet-Lite0 int8) take
    about half the time of one after another. An exception in the block or while waiting (a failed
    conversion, a time limit's signal) kills the children not done yet, and nothing of theirs is
    cached (an encoder built in the block converts again when next used)."""
    if getattr(_side_by_side, "pending", None) is not None:  # nested: the outer block waits
        yield
        return
    pending: list[Pending] = []
    _side_by_side.pending = pending
    try:
        yield
        for job in pending:
            job.result()
    except BaseException:
        for job in pending:
            job.cancel()
        raise
    finally:
        _side_by_side.pending = None


def _write_atomically(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_flatbuffer(
    path: Path,
    build: Callable[[], Any],
    quantize: str = "none",
    calibration: Callable[[], np.ndarray] | None = None,
    hint: str = "",
) -> bytes | Pending:
    """The flatbuffer at `path` (see `lite_path`), or `build()`'s Keras model converted (`convert`,
    static quantisation calibrated on `calibration()`) and written there atomically (built only
    then: a cached file needs no Keras model at all). Inside `side_by_side` a conversion is started
    and its `Pending` returned. `hint`: added to the converter's error."""
    if path.is_file():
        return path.read_bytes()
    job = Pending(path, build, quantize, calibration, hint)
    pending = getattr(_side_by_side, "pending", None)
    if pending is None:
        return job.result()
    pending.append(job)  # before it starts: the block cancels it whatever happens from here
    job.start()
    return job


def release_arena(runner) -> None:
    """`runner.release_arena()` when the runner is a `LiteModel` (a Keras model keeps its memory)."""
    if isinstance(runner, LiteModel):
        runner.release_arena()


class LiteModel:
    """Calls a converted network like `predict_on_batch`: a float32 batch in, the model's outputs (in
    the Keras model's output order) out as numpy arrays. One call at a time (a lock: an encoder is
    shared by the threads of a process, `ml.embed.shared_encoder`); TFLite runs its own threads."""

    def __init__(self, flatbuffer: bytes | Pending, threads: int | None = None) -> None:
        self._flatbuffer, self._threads = flatbuffer, int(threads or usable_cpus())
        self._interpreter = self._runner = None
        self._lock = threading.Lock()
        self.inputs: list[str] = []
        self._outputs: list[str] = []
        if isinstance(flatbuffer, bytes):  # a Pending one is read on first use (`side_by_side`)
            self._built()

    def _built(self):
        """The signature runner, with its interpreter built from the flatbuffer when there is none."""
        if self._runner is None:
            import tensorflow as tf

            if isinstance(self._flatbuffer, Pending):
                self._flatbuffer = self._flatbuffer.result()

            with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT is its successor
                warnings.simplefilter("ignore")
                self._interpreter = tf.lite.Interpreter(
                    model_content=self._flatbuffer, num_threads=self._threads
                )
            self._runner = self._interpreter.get_signature_runner()
            self.inputs = list(self._runner.get_input_details())
            names = list(self._runner.get_output_details())
            self._outputs = sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]))  # output_0, output_1...
        return self._runner

    def release_arena(self) -> None:
        """Let go of the interpreter: its tensor arena keeps the size of the largest batch it ran
        (TFLite grows it, never shrinks it: MiniLM holds ~245 MB more after 64 texts of 256 tokens
        than before). The next call builds a fresh interpreter from the flatbuffer."""
        with self._lock:
            self._interpreter = self._runner = None

    def predict_on_batch(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """`x`: the batch (one input) or {input name: batch}; returns what Keras would: one array for
        a one-output model, else a list in output order."""
        with self._lock:
            runner = self._built()
            feed = x if isinstance(x, dict) else {self.inputs[0]: x}
            out = runner(**{name: np.ascontiguousarray(v) for name, v in feed.items()})
        got = [np.asarray(out[name]) for name in self._outputs]
        return got[0] if len(got) == 1 else got
