"""The product pictures: a garment drawn with PIL, or a Fashion-MNIST picture of the same garment
class, upscaled and tinted; both in the product's colour and pattern, so an image model sees what
the title says. `jitter` makes cheap per-product variants of a shared picture for large worlds.

Every picture draws from its own stream, seeded by (seed, 7, product index) -- (seed, 8, index) for
a jitter variant -- so the pictures are the same whatever the image source, and never change the
ratings or the texts.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from demo.vocabulary import COLOURS, GARMENTS, PATTERNS

# Where Debian's `dataset-fashion-mnist` puts the idx files (checked in order).
FASHION_MNIST_DIRS: tuple[Path, ...] = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/dataset-fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
)
_FMNIST_IMAGES = "train-images-idx3-ubyte.gz"
_FMNIST_LABELS = "train-labels-idx1-ubyte.gz"


def find_fashion_mnist(dirs: Sequence[Path | str] | None = None) -> Path | None:
    """The folder holding Fashion-MNIST's train idx files, or None when it is not installed."""
    for d in dirs if dirs is not None else FASHION_MNIST_DIRS:
        d = Path(d)
        if (d / _FMNIST_IMAGES).is_file() and (d / _FMNIST_LABELS).is_file():
            return d
    return None


@dataclass
class Pictures:
    """Makes product pictures of one world: `source` "rendered" or "fashion-mnist" (from `fm_dir`),
    `variation` "per-product" (each from scratch) or "jitter" (one picture per garment/colour/pattern,
    each product a variant of it)."""

    seed: int
    size: int
    source: str
    variation: str
    fm_dir: Path | None = None
    _bases: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.source == "fashion-mnist":
            assert self.fm_dir is not None
            self._fm_images, fm_labels = _load_fashion_mnist(self.fm_dir)
            self._by_label = {lab: np.flatnonzero(fm_labels == lab) for lab in range(10)}

    def picture(self, j: int, category: int, colour: int, pattern: int) -> Image.Image:
        """Product j's picture (a garment of type `category` in `colour` and `pattern`, by index)."""
        key = (int(category), int(colour), int(pattern))
        if self.variation == "jitter" and key in self._bases:
            return jitter(self._bases[key], np.random.default_rng([self.seed, 8, j]))
        # per product (or per garment/colour/pattern for "jitter"): stable whatever the source
        rng = np.random.default_rng([self.seed, 7, j])
        g, rgb = GARMENTS[category], COLOURS[colour][1]
        if self.source == "fashion-mnist":
            pick = self._by_label[g.fmnist_label]
            pic = self._fm_images[int(pick[rng.integers(len(pick))])]
            img = _tint_fashion_mnist(pic, rgb, PATTERNS[pattern], self.size, rng)
        else:
            img = _render_garment(g.key, rgb, PATTERNS[pattern], self.size, rng)
        if self.variation == "jitter":
            self._bases[key] = np.asarray(img.convert("RGB"))
        return img


def jitter(base: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A cheap variant of a picture (about 1 ms): mirrored or not, shifted by up to 1/28 of its size
    (edges repeated), lightened or darkened by up to 8%."""
    a = base[:, ::-1] if rng.random() < 0.5 else base
    h, w = a.shape[:2]
    m = max(1, w // 28)
    dy, dx = (int(v) for v in rng.integers(-m, m + 1, size=2))
    a = np.pad(a, ((m, m), (m, m), (0, 0)), mode="edge")[m + dy : m + dy + h, m + dx : m + dx + w]
    gain = 1.0 + float(rng.uniform(-0.08, 0.08))
    return Image.fromarray(np.clip(a.astype(np.float32) * gain, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- drawn garments
_BACKGROUNDS = ((246, 245, 241), (242, 244, 247), (247, 243, 238), (240, 242, 238))


@dataclass(frozen=True)
class Shape:
    """A garment outline on a 100x100 grid: `body` is coloured and patterned, `trim` is a fixed colour
    (soles, handles), `lines` are drawn in the outline colour. Parts: ("poly", points),
    ("band", box, start, end, width), ("line", points), ("arc", box, start, end), ("dot", (x, y, r))."""

    body: tuple = ()
    trim: tuple = ()
    lines: tuple = ()


_SHAPES: dict[str, Shape] = {
    "tshirt": Shape(
        body=(
            (
                "poly",
                [
                    (36, 18),
                    (44, 15),
                    (50, 21),
                    (56, 15),
                    (64, 18),
                    (86, 32),
                    (78, 45),
                    (68, 39),
                    (68, 86),
                    (32, 86),
                    (32, 39),
                    (22, 45),
                    (14, 32),
                ],
            ),
        ),
        lines=(("arc", (44, 8, 56, 22), 0, 180),),
    ),
    "trousers": Shape(
        body=(("poly", [(31, 12), (69, 12), (73, 89), (56, 89), (50, 36), (44, 89), (27, 89)]),),
        lines=(("line", [(31, 19), (69, 19)]), ("line", [(50, 19), (50, 34)])),
    ),
    "pullover": Shape(
        body=(
            (
                "poly",
                [
                    (36, 15),
                    (44, 13),
                    (50, 18),
                    (56, 13),
                    (64, 15),
                    (80, 24),
                    (89, 80),
                    (79, 83),
                    (70, 42),
                    (70, 87),
                    (30, 87),
                    (30, 42),
                    (21, 83),
                    (11, 80),
                    (20, 24),
                ],
            ),
        ),
        lines=(
            ("line", [(30, 81), (70, 81)]),
            ("line", [(11, 75), (21, 78)]),
            ("line", [(79, 78), (89, 75)]),
            ("arc", (44, 7, 56, 20), 0, 180),
        ),
    ),
    "dress": Shape(
        body=(
            (
                "poly",
                [
                    (41, 12),
                    (45, 12),
                    (47, 18),
                    (53, 18),
                    (55, 12),
                    (59, 12),
                    (61, 24),
                    (56, 36),
                    (78, 89),
                    (22, 89),
                    (44, 36),
                    (39, 24),
                ],
            ),
        ),
        lines=(("line", [(44, 36), (56, 36)]),),
    ),
    "coat": Shape(
        body=(
            (
                "poly",
                [
                    (37, 11),
                    (50, 17),
                    (63, 11),
                    (79, 19),
                    (88, 79),
                    (78, 82),
                    (71, 40),
                    (73, 93),
                    (27, 93),
                    (29, 40),
                    (22, 82),
                    (12, 79),
                    (21, 19),
                ],
            ),
        ),
        lines=(
            ("line", [(50, 17), (50, 93)]),
            ("line", [(37, 11), (46, 38), (50, 17)]),
            ("line", [(63, 11), (54, 38), (50, 17)]),
            ("dot", (54, 50, 1.6)),
            ("dot", (54, 62, 1.6)),
            ("dot", (54, 74, 1.6)),
        ),
    ),
    "sandal": Shape(
        body=(
            ("poly", [(10, 67), (90, 65), (90, 70), (10, 72)]),
            ("band", (56, 48, 88, 84), 180, 360, 9),
            ("band", (33, 40, 67, 96), 180, 360, 9),
            ("band", (13, 36, 37, 104), 180, 360, 7),
        ),
        trim=(
            ("poly", [(10, 72), (90, 70), (92, 77), (14, 79), (10, 77)]),
            ("poly", [(12, 78), (26, 78), (25, 88), (14, 88)]),
        ),
    ),
    "shirt": Shape(
        body=(
            (
                "poly",
                [
                    (37, 14),
                    (44, 12),
                    (50, 16),
                    (56, 12),
                    (63, 14),
                    (80, 23),
                    (88, 80),
                    (78, 82),
                    (69, 40),
                    (69, 88),
                    (31, 88),
                    (31, 40),
                    (22, 82),
                    (12, 80),
                    (20, 23),
                ],
            ),
        ),
        lines=(
            ("line", [(44, 12), (50, 24), (56, 12)]),
            ("line", [(50, 24), (50, 88)]),
            ("dot", (53, 36, 1.3)),
            ("dot", (53, 50, 1.3)),
            ("dot", (53, 64, 1.3)),
            ("dot", (53, 78, 1.3)),
            ("line", [(40, 20), (50, 24), (60, 20)]),
        ),
    ),
    "sneaker": Shape(
        body=(
            (
                "poly",
                [
                    (12, 70),
                    (14, 52),
                    (28, 48),
                    (42, 40),
                    (55, 37),
                    (62, 45),
                    (78, 53),
                    (90, 61),
                    (91, 71),
                    (12, 71),
                ],
            ),
        ),
        trim=(("poly", [(10, 71), (93, 71), (93, 79), (12, 80), (10, 76)]),),
        lines=(
            ("line", [(44, 44), (52, 54)]),
            ("line", [(48, 42), (56, 52)]),
            ("line", [(52, 40), (60, 50)]),
            ("line", [(74, 56), (80, 71)]),
        ),
    ),
    "bag": Shape(
        body=(("poly", [(20, 40), (80, 40), (88, 87), (12, 87)]),),
        trim=(("band", (32, 12, 68, 62), 180, 360, 5),),
        lines=(("line", [(20, 52), (80, 52)]), ("dot", (50, 57, 2.2))),
    ),
    "boot": Shape(
        body=(("poly", [(26, 18), (54, 18), (56, 52), (77, 59), (89, 67), (90, 76), (22, 76), (25, 40)]),),
        trim=(
            ("poly", [(20, 76), (92, 76), (92, 83), (20, 83)]),
            ("poly", [(20, 83), (36, 83), (36, 91), (21, 91)]),
        ),
        lines=(("line", [(48, 20), (50, 56)]),),
    ),
}


def _draw_parts(draw: ImageDraw.ImageDraw, parts: Sequence, xf, scale: float, fill, width: int) -> None:
    for part in parts:
        kind = part[0]
        if kind == "poly":
            draw.polygon([xf(p) for p in part[1]], fill=fill)
        elif kind == "band":
            x0, y0, x1, y1 = part[1]
            (ax, ay), (bx, by) = xf((x0, y0)), xf((x1, y1))
            draw.arc(
                (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)),
                part[2],
                part[3],
                fill=fill,
                width=max(1, int(part[4] * scale)),
            )
        elif kind == "line":
            draw.line([xf(p) for p in part[1]], fill=fill, width=width, joint="curve")
        elif kind == "arc":
            x0, y0, x1, y1 = part[1]
            (ax, ay), (bx, by) = xf((x0, y0)), xf((x1, y1))
            draw.arc(
                (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)), part[2], part[3], fill=fill, width=width
            )
        elif kind == "dot":
            cx, cy, r = part[1]
            x, y = xf((cx, cy))
            draw.ellipse((x - r * scale, y - r * scale, x + r * scale, y + r * scale), fill=fill)


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * f)))) for c in rgb)  # type: ignore[return-value]


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (250, 250, 250) if lum < 150 else (30, 30, 36)


def _pattern_layer(
    size: int, rgb: tuple[int, int, int], pattern: str, rng: np.random.Generator
) -> Image.Image:
    layer = Image.new("RGB", (size, size), rgb)
    if pattern == "plain":
        return layer
    draw = ImageDraw.Draw(layer)
    ink = _contrast(rgb)
    if pattern == "striped":
        period = size / float(rng.uniform(9.0, 13.0))
        band = period * 0.45
        y = float(rng.uniform(0, period))
        while y < size:
            draw.rectangle((0, int(y), size, int(y + band)), fill=ink)
            y += period
    else:  # polka dot
        period = size / float(rng.uniform(9.0, 12.0))
        r = period * 0.22
        row = 0
        y = float(rng.uniform(0, period / 2))
        while y < size + period:
            x = (period / 2 if row % 2 else 0.0) + float(rng.uniform(0, 0.1)) * period
            while x < size + period:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
                x += period
            y += period * 0.87
            row += 1
    return layer


def _dilate(a: np.ndarray, r: int) -> np.ndarray:
    """Grey-level dilation by a (2r+1) square, with shifted maxima (much faster than MaxFilter)."""
    out = a.copy()
    for _ in range(r):
        nxt = out.copy()
        np.maximum(nxt[1:, :], out[:-1, :], out=nxt[1:, :])
        np.maximum(nxt[:-1, :], out[1:, :], out=nxt[:-1, :])
        np.maximum(nxt[:, 1:], out[:, :-1], out=nxt[:, 1:])
        np.maximum(nxt[:, :-1], out[:, 1:], out=nxt[:, :-1])
        out = nxt
    return out


def _render_garment(
    key: str, rgb: tuple[int, int, int], pattern: str, size: int, rng: np.random.Generator
) -> Image.Image:
    ss = 2  # supersampling
    S = size * ss
    bg = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    zoom = float(rng.uniform(0.88, 1.0))
    dx, dy = (float(v) for v in rng.uniform(-3.0, 3.0, size=2))
    angle = math.radians(float(rng.uniform(-5.0, 5.0)))
    ca, sa = math.cos(angle), math.sin(angle)
    scale = S / 100.0 * zoom

    def xf(p: tuple[float, float]) -> tuple[float, float]:
        x, y = p[0] - 50.0, p[1] - 50.0
        x, y = x * ca - y * sa, x * sa + y * ca
        return ((x + dx) * scale + S / 2.0, (y + dy) * scale + S / 2.0)

    shape = _SHAPES[key]
    body = Image.new("L", (S, S), 0)
    _draw_parts(ImageDraw.Draw(body), shape.body, xf, scale, 255, 1)
    trim = Image.new("L", (S, S), 0)
    _draw_parts(ImageDraw.Draw(trim), shape.trim, xf, scale, 255, 1)

    canvas = Image.new("RGB", (S, S), bg)
    # soft drop shadow (blurred at quarter resolution: cheap)
    union = ImageChops.lighter(body, trim)
    q = max(8, S // 4)
    shadow = union.resize((q, q), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(radius=q / 60))
    shadow = shadow.resize((S, S), Image.Resampling.BILINEAR).point(lambda v: int(v * 0.6))
    shadow_off = Image.new("L", (S, S), 0)
    shadow_off.paste(shadow, (int(S / 90), int(S / 70)))
    canvas.paste(_shade(bg, 0.82), (0, 0, S, S), shadow_off)

    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    outline = _shade(rgb, 0.55) if lum > 60 else (90, 90, 96)
    if lum > 225:
        outline = (150, 150, 155)
    trim_rgb = (235, 235, 230) if lum < 140 else (60, 55, 52)
    canvas.paste(trim_rgb, (0, 0, S, S), trim)
    # the garment, with a gentle left-to-right light fall-off
    garment = ImageChops.multiply(_pattern_layer(S, rgb, pattern, rng), _gradient(S))
    canvas.paste(garment, (0, 0), body)
    # outline = dilated union minus union
    width = max(2, int(S / 110))
    u8 = np.asarray(union)
    dil = _dilate(u8, max(1, width // 2))
    edge = Image.fromarray(dil - u8)  # dil >= u8 everywhere
    canvas.paste(outline, (0, 0, S, S), edge)
    _draw_parts(ImageDraw.Draw(canvas), shape.lines, xf, scale, outline, width)
    return canvas.reduce(ss)


_GRADIENTS: dict[int, Image.Image] = {}


def _gradient(S: int) -> Image.Image:
    if S not in _GRADIENTS:
        row = np.linspace(255.0, 222.0, S).round().astype(np.uint8)
        _GRADIENTS[S] = Image.fromarray(np.repeat(row[None, :], S, axis=0)).convert("RGB")
    return _GRADIENTS[S]


# ----------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


_FMNIST_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _load_fashion_mnist(d: Path) -> tuple[np.ndarray, np.ndarray]:
    key = str(d.resolve())
    if key not in _FMNIST_CACHE:
        images = _read_idx(d / _FMNIST_IMAGES)
        labels = _read_idx(d / _FMNIST_LABELS)
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"unexpected Fashion-MNIST files in {d}")
        _FMNIST_CACHE[key] = (images, labels)
    return _FMNIST_CACHE[key]


def _tint_fashion_mnist(
    pic: np.ndarray, rgb: tuple[int, int, int], pattern: str, size: int, rng: np.random.Generator
) -> Image.Image:
    bg = np.array(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], dtype=np.float32)
    padded = np.pad(pic, 2)  # 32x32: a margin around the garment
    inten = (
        np.asarray(Image.fromarray(padded).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        / 255.0
    )
    inten = np.clip(inten, 0.0, 1.0)
    mask = np.clip((inten - 0.02) / 0.12, 0.0, 1.0)[:, :, None]
    top = float(np.percentile(inten[mask[:, :, 0] > 0.5], 95)) if (mask > 0.5).any() else 1.0
    shading = 0.45 + 0.55 * np.clip(inten / max(top, 1e-3), 0.0, 1.0)
    layer = np.asarray(_pattern_layer(size, rgb, pattern, rng), dtype=np.float32)
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if lum < 60:  # keep dark garments' texture visible
        shading = 0.7 + 0.3 * shading
        layer = layer + 25.0
    tinted = np.clip(layer * shading[:, :, None], 0, 255)
    out = bg[None, None, :] * (1.0 - mask) + tinted * mask
    return Image.fromarray(out.round().astype(np.uint8))
