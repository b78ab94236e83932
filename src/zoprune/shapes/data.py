"""Procedural "shapes" VQA data: small coloured objects on a noisy, textured background.

Every image is 96x96 RGB. It holds 2-4 objects (circle, square, triangle, cross) in one of five colours and
two sizes, placed without overlap on a random low-frequency texture with per-pixel noise, and, in half of the
images, one rendered white digit. Objects cover about 9% of the image (2-20%), so most 8x8 patches (visual tokens)
are background, as in real photographs.

Questions have one-word answers and come in seven kinds (:data:`KINDS`): attribute questions (``colour``,
``shape``, ``size``), counting (``count``), existence with absent objects as POPE asks them (``exists``),
relative position (``position``) and digit reading (``digit``). :func:`make_dataset` cycles through the kinds,
so a data set of ``7 * k`` examples is exactly balanced; answers within a kind are balanced as far as the scene
allows.

Everything is driven by a ``numpy.random.Generator``: the same seed gives the same images, questions and answers.

Two splits (:data:`SPLITS`) draw from this world. ``standard`` is the training distribution above. ``hard`` stays
inside what the shipped model was trained on (object counts, sizes, colours, shapes, the digit's font) but draws
from the crowded, confusable end of it, so that pruning methods are told apart: always four objects and the digit,
two shapes and two colours per image (every object shares its colour or its shape with another), mostly small
objects (a small object covers 2x2 to 3x3 patches) with size answers still balanced, attribute and
relative-position questions about a small object when one qualifies, absent objects in existence questions always
sharing a colour or shape with the image, and the most background blobs, at high contrast (diverse background
tokens that compete with the objects').
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 96
PATCH_SIZE = 8

SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS = {
    "red": (220, 35, 35),
    "green": (40, 170, 45),
    "blue": (40, 70, 235),
    "yellow": (240, 215, 40),
    "purple": (150, 50, 200),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left", "right", "above", "below")
KINDS = ("colour", "shape", "size", "count", "exists", "position", "digit")

#: Radius ranges (pixels) of the two sizes; the gap keeps "small" and "large" unambiguous.
RADIUS = {"small": (6.5, 8.0), "large": (11.0, 13.0)}
DIGIT_COLOUR = (245, 245, 245)
DIGIT_FONT_SIZE = 18
#: Minimum centre distance (pixels) along the asked axis for a relative-position question.
MIN_SEPARATION = 10.0


@dataclass(frozen=True)
class Split:
    """How scenes and questions are drawn. The defaults are the standard split, draw for draw."""

    objects: tuple[int, int] = (2, 4)  # fewest and most objects per image
    shape_palette: tuple[int, int] = (2, len(SHAPES))  # fewest and most distinct shapes per image
    colour_palette: tuple[int, int] = (2, len(COLOUR_NAMES))  # fewest and most distinct colours per image
    small_fraction: float | None = None  # chance an object is small; None: "small" and "large" equally likely
    digit_fraction: float = 0.5  # chance an image holds the digit (digit questions always get one)
    adversarial_absent: float = 0.8  # chance an absent object in an existence question shares a colour or shape
    ask_small: bool = False  # colour, shape and position questions about small objects when one qualifies
    balanced_size: bool = False  # a size question's answer drawn first, both equally; scenes redrawn until one fits
    blobs: tuple[int, int] = (2, 4)  # fewest and most soft grey blobs in the background
    #: the blobs' contrast: None draws it from N(0, 18); (low, high) draws its size uniformly in [low, high) with a
    #: random sign (within 2 standard deviations of the standard draw when high <= 36)
    blob_contrast: tuple[float, float] | None = None


SPLITS = {
    "standard": Split(),
    "hard": Split(objects=(4, 4), shape_palette=(2, 2), colour_palette=(2, 2), small_fraction=0.75,
                  digit_fraction=1.0, adversarial_absent=1.0, ask_small=True, balanced_size=True, blobs=(4, 4),
                  blob_contrast=(18.0, 36.0)),
}


def get_split(name: str) -> Split:
    """The split called ``name`` (a ValueError naming the splits otherwise)."""
    try:
        return SPLITS[name]
    except KeyError:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}") from None


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, pixels
    y: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Digit:
    value: int
    x: float  # centre of the glyph box, pixels
    y: float
    box: tuple[int, int, int, int]  # left, top, right, bottom


@dataclass
class Scene:
    image: Image.Image
    objects: tuple[ShapeObject, ...]
    digit: Digit | None
    #: uint8 (96, 96): 0 = background, i + 1 = objects[i], len(objects) + 1 = the digit.
    label_map: np.ndarray = field(repr=False)


@dataclass
class ShapesExample:
    image: Image.Image
    question: str
    answer: str
    kind: str
    objects: tuple[ShapeObject, ...]
    digit: Digit | None = None
    label_map: np.ndarray | None = field(default=None, repr=False)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and surrounding whitespace; keep the first word (answers are one word)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    words = text.split()
    return words[0] if words else ""


def vocabulary() -> list[str]:
    """Every word that can appear in a prompt, question or answer (lower case), in a fixed order."""
    words = ["user", "assistant", ":", "?", ",", "what", "colour", "shape", "size", "is", "the", "object", "how",
             "many", "are", "there", "a", "an", "of", "number", "written", "yes", "no", "left", "right", "above",
             "below"]
    words += list(SHAPES) + [PLURALS[s] for s in SHAPES] + list(COLOUR_NAMES) + list(SIZES) + list(NUMBER_WORDS)
    out: list[str] = []
    for w in words:
        if w not in out:
            out.append(w)
    return out


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=DIGIT_FONT_SIZE)
    except (ImportError, OSError):  # Pillow without FreeType: the bitmap font is small but still legible
        return ImageFont.load_default()


@lru_cache(maxsize=1)
def _pixel_centres() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    return xs + 0.5, ys + 0.5


def _background(rng: np.random.Generator, split: Split) -> np.ndarray:
    """Float (96, 96, 3): a muted base colour, a smooth random colour field and a few soft blobs."""
    base = rng.uniform(70, 170) + rng.uniform(-20, 20, size=3)
    coarse = rng.normal(0, 22, size=(4, 4, 3))
    # bilinear upsampling of the 4x4 field, vectorised
    t = (np.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * 3
    i0 = np.clip(np.floor(t).astype(int), 0, 2)
    f = (t - i0)[:, None]
    rows = coarse[i0] * (1 - f)[..., None] + coarse[i0 + 1] * f[..., None]  # (96, 4, 3)
    field_ = rows[:, i0] * (1 - f.T)[..., None] + rows[:, i0 + 1] * f.T[..., None]  # (96, 96, 3)
    img = base + field_
    xs, ys = _pixel_centres()
    for _ in range(rng.integers(split.blobs[0], split.blobs[1] + 1)):  # soft grey blobs: texture, not objects
        cx, cy, s = rng.uniform(0, IMAGE_SIZE), rng.uniform(0, IMAGE_SIZE), rng.uniform(6, 18)
        if split.blob_contrast is None:
            contrast = rng.normal(0, 18)
        else:
            contrast = rng.choice((-1.0, 1.0)) * rng.uniform(*split.blob_contrast)
        img += contrast * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))[..., None]
    return img


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        a = r * 0.85
        pts = [(-a, -a), (a, -a), (a, a), (-a, a)]
    elif shape == "triangle":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        pts = [(px, py + r * 0.15) for px, py in pts]
    elif shape == "cross":
        a, b = r, r * 0.33
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b),
               (-b, -b)]
    else:
        raise ValueError(shape)
    return [(x + px, y + py) for px, py in pts]


def _draw(draw: ImageDraw.ImageDraw, labels: ImageDraw.ImageDraw, obj: ShapeObject, label: int,
          rng: np.random.Generator) -> None:
    fill = tuple(int(c) for c in np.clip(np.array(COLOURS[obj.colour]) + rng.normal(0, 10, 3), 0, 255))
    x, y, r = obj.x, obj.y, obj.radius
    if obj.shape == "circle":
        box = (x - r, y - r, x + r, y + r)
        draw.ellipse(box, fill=fill)
        labels.ellipse(box, fill=label)
    else:
        pts = _polygon(obj.shape, x, y, r)
        draw.polygon(pts, fill=fill)
        labels.polygon(pts, fill=label)


def make_scene(rng: np.random.Generator, n_objects: int | None = None, with_digit: bool | None = None,
               split: Split = SPLITS["standard"]) -> Scene:
    """A random image with its objects. Shapes and colours are drawn from small random palettes, so repeated
    shapes (for counting) and repeated colours (so that binding matters) are common."""
    n = int(rng.integers(split.objects[0], split.objects[1] + 1)) if n_objects is None else n_objects
    with_digit = bool(rng.random() < split.digit_fraction) if with_digit is None else with_digit
    shape_palette = rng.choice(len(SHAPES), size=int(rng.integers(split.shape_palette[0], split.shape_palette[1] + 1)),
                               replace=False)
    colour_palette = rng.choice(len(COLOUR_NAMES),
                                size=int(rng.integers(split.colour_palette[0], split.colour_palette[1] + 1)),
                                replace=False)

    placed: list[tuple[float, float, float]] = []  # x, y, radius of everything drawn (digit included)
    digit = None
    font = _font()
    if with_digit:
        value = int(rng.integers(0, 10))
        left, top, right, bottom = font.getbbox(str(value), stroke_width=1)
        w, h = right - left, bottom - top
        x0 = int(rng.integers(3, IMAGE_SIZE - w - 3))
        y0 = int(rng.integers(3, IMAGE_SIZE - h - 3))
        digit = Digit(value, x0 + w / 2, y0 + h / 2, (x0, y0, x0 + w, y0 + h))
        placed.append((digit.x, digit.y, max(w, h) / 2 + 1))

    objects: list[ShapeObject] = []
    attempts = 0
    while len(objects) < n and attempts < 500:
        attempts += 1
        if split.small_fraction is None:
            size = SIZES[int(rng.integers(0, 2))]
        else:
            size = "small" if rng.random() < split.small_fraction else "large"
        r = float(rng.uniform(*RADIUS[size]))
        x = float(rng.uniform(r + 2, IMAGE_SIZE - r - 2))
        y = float(rng.uniform(r + 2, IMAGE_SIZE - r - 2))
        if any((x - px) ** 2 + (y - py) ** 2 < (r + pr + 3) ** 2 for px, py, pr in placed):
            continue
        shape = SHAPES[int(rng.choice(shape_palette))]
        colour = COLOUR_NAMES[int(rng.choice(colour_palette))]
        objects.append(ShapeObject(shape, colour, size, x, y, r))
        placed.append((x, y, r))

    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    label_img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw, labels = ImageDraw.Draw(canvas), ImageDraw.Draw(label_img)
    draw.fontmode = labels.fontmode = "1"  # no anti-aliasing: the label map must hold exact object ids
    for i, obj in enumerate(objects):
        _draw(draw, labels, obj, i + 1, rng)
    if digit is not None:
        left, top, _, _ = font.getbbox(str(digit.value), stroke_width=1)
        pos = (digit.box[0] - left, digit.box[1] - top)
        draw.text(pos, str(digit.value), fill=DIGIT_COLOUR, font=font, stroke_width=1, stroke_fill=DIGIT_COLOUR)
        labels.text(pos, str(digit.value), fill=len(objects) + 1, font=font, stroke_width=1,
                    stroke_fill=len(objects) + 1)
    label_map = np.asarray(label_img)
    drawn = np.asarray(canvas).astype(np.float32)
    img = np.where((label_map > 0)[..., None], drawn, _background(rng, split))
    img = img + rng.normal(0, 5, size=img.shape)  # sensor noise over everything
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return Scene(image=image, objects=tuple(objects), digit=digit, label_map=label_map.copy())


def _count(objects, **attrs) -> int:
    return sum(all(getattr(o, k) == v for k, v in attrs.items()) for o in objects)


def _small_first(objects: list[ShapeObject], split: Split) -> list[ShapeObject]:
    """The small ones among ``objects`` when the split asks about small objects and there are any."""
    small = [o for o in objects if o.size == "small"]
    return small if split.ask_small and small else objects


def ask(scene: Scene, rng: np.random.Generator, kind: str, split: Split = SPLITS["standard"],
        size: str | None = None) -> tuple[str, str] | None:
    """One (question, answer) of the given kind about ``scene``, or None when the scene cannot support it;
    ``size`` fixes the answer of a size question."""
    objs = scene.objects
    if kind == "colour":
        unique = _small_first([o for o in objs if _count(objs, shape=o.shape) == 1], split)
        if not unique:
            return None
        o = unique[int(rng.integers(len(unique)))]
        return f"what colour is the {o.shape} ?", o.colour
    if kind == "shape":
        unique = _small_first([o for o in objs if _count(objs, colour=o.colour) == 1], split)
        if not unique:
            return None
        o = unique[int(rng.integers(len(unique)))]
        return f"what shape is the {o.colour} object ?", o.shape
    if kind == "size":
        unique = [o for o in objs if _count(objs, colour=o.colour, shape=o.shape) == 1]
        by_size = {s: [o for o in unique if o.size == s] for s in SIZES}
        if size is not None:  # the answer was drawn first (balanced sizes): the caller redraws scenes until it fits
            if not by_size[size]:
                return None
            s = size
        else:
            options = [s for s in SIZES if by_size[s]]
            if not options:
                return None
            s = options[int(rng.integers(len(options)))]
        o = by_size[s][int(rng.integers(len(by_size[s])))]
        return f"what size is the {o.colour} {o.shape} ?", o.size
    if kind == "count":
        counts = {s: _count(objs, shape=s) for s in SHAPES}
        by_count: dict[int, list[str]] = {}
        for s, c in counts.items():
            by_count.setdefault(c, []).append(s)
        c = int(rng.integers(0, 4))  # answers zero..three, uniform: the caller redraws the scene when absent
        if c not in by_count:
            return None
        s = by_count[c][int(rng.integers(len(by_count[c])))]
        return f"how many {PLURALS[s]} are there ?", NUMBER_WORDS[c]
    if kind == "exists":
        present = {(o.colour, o.shape) for o in objs}
        if rng.random() < 0.5:
            colour, shape = sorted(present)[int(rng.integers(len(present)))]
            return f"is there a {colour} {shape} ?", "yes"
        # absent combinations, preferring "adversarial" ones whose colour or shape is in the image (POPE-like)
        colours_here = {c for c, _ in present}
        shapes_here = {s for _, s in present}
        absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
        hard = [(c, s) for c, s in absent if c in colours_here or s in shapes_here]
        pool = hard if (hard and rng.random() < split.adversarial_absent) else absent
        colour, shape = pool[int(rng.integers(len(pool)))]
        return f"is there a {colour} {shape} ?", "no"
    if kind == "position":
        unique = [o for o in objs if _count(objs, colour=o.colour, shape=o.shape) == 1]
        pairs = []
        for a in _small_first(unique, split):  # the object asked about; the other one may be of either size
            for b in unique:
                if a is b:
                    continue
                if abs(a.x - b.x) >= MIN_SEPARATION:
                    pairs.append((a, b, "x"))
                if abs(a.y - b.y) >= MIN_SEPARATION:
                    pairs.append((a, b, "y"))
        if not pairs:
            return None
        a, b, axis = pairs[int(rng.integers(len(pairs)))]
        want_yes = bool(rng.random() < 0.5)
        if axis == "x":
            a_first = a.x < b.x  # a is left of b
            rel = ("left of" if a_first else "right of") if want_yes else ("right of" if a_first else "left of")
        else:
            a_first = a.y < b.y  # a is above b (image y grows downwards)
            rel = ("above" if a_first else "below") if want_yes else ("below" if a_first else "above")
        return f"is the {a.colour} {a.shape} {rel} the {b.colour} {b.shape} ?", "yes" if want_yes else "no"
    if kind == "digit":
        if scene.digit is None:
            return None
        return "what number is written ?", NUMBER_WORDS[scene.digit.value]
    raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")


def make_example(rng: np.random.Generator, kind: str | None = None, split: str = "standard") -> ShapesExample:
    """A random scene of ``split`` and one question of ``kind`` (drawn uniformly from :data:`KINDS` when None)."""
    kind = KINDS[int(rng.integers(len(KINDS)))] if kind is None else kind
    drawn = get_split(split)
    # drawn once, not per scene: redrawing it with each scene would favour the size most scenes offer
    size = SIZES[int(rng.integers(len(SIZES)))] if kind == "size" and drawn.balanced_size else None
    while True:
        scene = make_scene(rng, with_digit=True if kind == "digit" else None, split=drawn)
        qa = ask(scene, rng, kind, drawn, size)
        if qa is not None:
            question, answer = qa
            return ShapesExample(image=scene.image, question=question, answer=answer, kind=kind,
                                 objects=scene.objects, digit=scene.digit, label_map=scene.label_map)


def make_dataset(n: int, seed: int, split: str = "standard") -> list[ShapesExample]:
    """``n`` examples of ``split`` whose kinds cycle through :data:`KINDS` (balanced), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [make_example(rng, KINDS[i % len(KINDS)], split) for i in range(n)]


_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """The word-level tokenisation used by the shapes tokenizer (lower case, punctuation split off)."""
    return _WORD.findall(text.lower())
