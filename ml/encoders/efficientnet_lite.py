"""EfficientNet-Lite0 in Keras 3 (backend-agnostic: keras layers only), plus the mapping from the
lukemelas / ml-illustrated PyTorch state dict (``efficientnet-lite0-57934424.pth``) to Keras weights.

Lite differences from EfficientNet-B0: no squeeze-excite, ReLU6 everywhere, stem (32) and head (1280)
channels not scaled. BatchNorm epsilon 1e-3 (``batch_norm_epsilon`` of the PyTorch port, the TF value).

Padding reproduces TensorFlow 'SAME' (lukemelas ``Conv2dStaticSamePadding`` for a fixed image size):
for a stride-2 conv the extra row/column goes at the bottom/right, e.g. a 3x3/2 conv on 224x224 pads
(0, 1) and a 5x5/2 conv on 56x56 pads (1, 2). The padding is explicit (``ZeroPadding2D`` followed by a
'valid' conv) so every backend computes the same thing.

Layer names mirror the PyTorch module names (``_blocks.3._bn1`` -> ``blocks_3_bn1``), which makes
the mapping in :func:`torch_to_keras_weights` one line per tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

IMAGE_SIZE = 224
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
DROPOUT_RATE = 0.2


@dataclass(frozen=True)
class StageArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# efficientnet_lite_builder.py (width 1.0, depth 1.0 for lite0): 'r1_k3_s11_e1_i32_o16', ...
LITE0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class BlockArgs:
    index: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int

    @property
    def hidden(self) -> int:
        return self.in_ch * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def lite0_blocks() -> list[BlockArgs]:
    """The 16 MBConv blocks of Lite0, in order (the first block of a stage carries its stride)."""
    blocks: list[BlockArgs] = []
    for stage in LITE0_STAGES:
        for r in range(stage.repeats):
            blocks.append(
                BlockArgs(
                    index=len(blocks),
                    kernel=stage.kernel,
                    stride=stage.stride if r == 0 else 1,
                    expand=stage.expand,
                    in_ch=stage.in_ch if r == 0 else stage.out_ch,
                    out_ch=stage.out_ch,
                )
            )
    return blocks


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis: output = ceil(size / stride)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad(x, kernel: int, stride: int, name: str):
    h, w = int(x.shape[1]), int(x.shape[2])
    ph, pw = same_padding(h, kernel, stride), same_padding(w, kernel, stride)
    if ph == (0, 0) and pw == (0, 0):
        return x
    return layers.ZeroPadding2D(padding=(ph, pw), name=name)(x)


def _bn(name: str):
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=0.99, name=name)


def _relu6(name: str):
    return layers.ReLU(max_value=6.0, name=name)


def _mbconv(x, b: BlockArgs):
    p = f"blocks_{b.index}_"
    inputs = x
    if b.expand != 1:
        x = layers.Conv2D(b.hidden, 1, use_bias=False, name=p + "expand_conv")(x)
        x = _bn(p + "bn0")(x)
        x = _relu6(p + "relu0")(x)
    x = _pad(x, b.kernel, b.stride, p + "pad")
    x = layers.DepthwiseConv2D(
        b.kernel, strides=b.stride, padding="valid", use_bias=False, name=p + "depthwise_conv"
    )(x)
    x = _bn(p + "bn1")(x)
    x = _relu6(p + "relu1")(x)
    x = layers.Conv2D(b.out_ch, 1, use_bias=False, name=p + "project_conv")(x)
    x = _bn(p + "bn2")(x)
    if b.residual:  # drop-connect is training-only; identity at inference
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def build_efficientnet_lite0(image_size: int = IMAGE_SIZE, name: str = "efficientnet_lite0") -> keras.Model:
    """Lite0 taking normalised NHWC float32 images; outputs ``[features (n, 1280), logits (n, 1000)]``.

    ``features`` are the globally average-pooled head activations (after ReLU6, before dropout/fc).
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = _pad(inputs, 3, 2, "stem_pad")
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="valid", use_bias=False, name="conv_stem")(x)
    x = _bn("bn0")(x)
    x = _relu6("stem_relu")(x)
    for b in lite0_blocks():
        x = _mbconv(x, b)
    x = layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="conv_head")(x)
    x = _bn("bn1")(x)
    x = _relu6("head_relu")(x)
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    y = layers.Dropout(DROPOUT_RATE, name="dropout")(features)
    logits = layers.Dense(NUM_CLASSES, name="fc")(y)
    return keras.Model(inputs, [features, logits], name=name)


# --- PyTorch state dict -> Keras weights -------------------------------------------------------

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")  # keras: gamma, beta, mean, var
# BatchNorm bookkeeping that carries no inference weight; consumed deliberately, not mapped.
IGNORED_SUFFIXES = ("num_batches_tracked",)


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    # torch (out, in, kh, kw) -> keras Conv2D (kh, kw, in, out)
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    # torch (channels, 1, kh, kw) -> keras DepthwiseConv2D (kh, kw, channels, 1)
    return np.transpose(w, (2, 3, 0, 1))


def weight_plan() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(keras layer name, [(torch key, kind), ...]) ...] in Keras weight order.

    kind is one of "conv", "depthwise", "dense_kernel", "plain".
    """
    plan: list[tuple[str, list[tuple[str, str]]]] = []

    def conv(layer: str, key: str, kind: str = "conv") -> None:
        plan.append((layer, [(key + ".weight", kind)]))

    def bn(layer: str, key: str) -> None:
        plan.append((layer, [(f"{key}.{s}", "plain") for s in _BN_SUFFIXES]))

    conv("conv_stem", "_conv_stem")
    bn("bn0", "_bn0")
    for b in lite0_blocks():
        t, k = f"_blocks.{b.index}.", f"blocks_{b.index}_"
        if b.expand != 1:
            conv(k + "expand_conv", t + "_expand_conv")
            bn(k + "bn0", t + "_bn0")
        conv(k + "depthwise_conv", t + "_depthwise_conv", "depthwise")
        bn(k + "bn1", t + "_bn1")
        conv(k + "project_conv", t + "_project_conv")
        bn(k + "bn2", t + "_bn2")
    conv("conv_head", "_conv_head")
    bn("bn1", "_bn1")
    plan.append(("fc", [("_fc.weight", "dense_kernel"), ("_fc.bias", "plain")]))
    return plan


def unmapped_keys(state_dict: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(checkpoint tensors the plan does not use and are not ignorable, plan keys missing from the
    checkpoint)."""
    used = {key for _, entries in weight_plan() for key, _ in entries}
    unused = [k for k in state_dict if k not in used and not k.endswith(IGNORED_SUFFIXES)]
    missing = [k for k in used if k not in state_dict]
    return unused, missing


def torch_to_keras_weights(state_dict: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Map a lukemelas-layout EfficientNet-Lite0 state dict to ``{keras layer name: weights}``.

    Raises ``ValueError`` if a tensor would be left unused or one the model needs is missing.
    """
    unused, missing = unmapped_keys(state_dict)
    if unused or missing:
        raise ValueError(
            f"checkpoint does not match EfficientNet-Lite0: unused={unused[:5]} missing={missing[:5]}"
        )
    convert = {
        "conv": _conv_kernel,
        "depthwise": _depthwise_kernel,
        "dense_kernel": lambda w: np.transpose(w, (1, 0)),
        "plain": lambda w: w,
    }
    return {
        layer: [
            np.ascontiguousarray(convert[kind](state_dict[key]), dtype=np.float32) for key, kind in entries
        ]
        for layer, entries in weight_plan()
    }


def assign_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Set every mapped layer's weights (shapes checked by Keras); all weighted layers must be covered."""
    weighted = {layer.name for layer in model.layers if layer.weights}
    missing = sorted(weighted - set(weights))
    if missing:
        raise ValueError(f"no weights for layers: {missing[:5]}")
    for name, values in weights.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(f"layer {name}: expected shapes {expected}, got {got}")
        layer.set_weights(values)
