"""The image pipeline's contracts and preprocessing, declared once.

The export, the calibration set, the Triton models (``image_preprocess``, ``image_classifier``,
``image_postprocess``, the ``image_pipeline`` ensemble), the web API and the tests read them
from here, so training-time and serving-time preprocessing cannot drift apart.

EfficientNet-Lite0 takes 224x224 RGB scaled as (x - 127) / 128 (its published preprocessing);
images are resized so the shorter side is 256 and center-cropped to 224 (the usual 0.875 crop).
"""

from __future__ import annotations

import io

import numpy as np

from python_backend.contract import ModelContract, TensorSpec

IMAGE_SIZE = 224
RESIZE_TO = 256
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0
TOP_K = 5
NUM_CLASSES = 1000
#: What ``image_preprocess`` decodes; anything else is refused with this list in the error.
FORMATS = ("JPEG", "PNG", "WEBP")
#: Largest encoded image accepted (bytes) and largest decoded side (pixels): a small file can
#: decode to a huge bitmap ("decompression bomb"), so both are checked.
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_SIDE = 8192
#: Largest batch of the image models (dynamic batcher).
IMAGE_MAX_BATCH = 8

IMAGE = TensorSpec("IMAGE", np.object_, (1,))
PIXELS = TensorSpec("PIXELS", np.float32, (3, IMAGE_SIZE, IMAGE_SIZE))
LOGITS = TensorSpec("LOGITS", np.float32, (NUM_CLASSES,))
PREPROCESS_US = TensorSpec("PREPROCESS_US", np.int64, (1,))
INFER_US = TensorSpec("INFER_US", np.int64, (1,))
LABELS = TensorSpec("LABELS", np.object_, (TOP_K,))
PROBABILITIES = TensorSpec("PROBABILITIES", np.float32, (TOP_K,))
CLASS_IDS = TensorSpec("CLASS_IDS", np.int64, (TOP_K,))

IMAGE_PREPROCESS = ModelContract("image_preprocess", (IMAGE,), (PIXELS, PREPROCESS_US))
#: The ONNX model itself: pixels in, logits out (what TensorRT builds engines from).
IMAGE_NETWORK = ModelContract("image_classifier", (PIXELS,), (LOGITS,))
#: The served CPU variant adds the time its ONNX Runtime call took, per batch.
IMAGE_CLASSIFIER = ModelContract("image_classifier", (PIXELS,), (LOGITS, INFER_US))
IMAGE_POSTPROCESS = ModelContract(
    "image_postprocess", (LOGITS,), (LABELS, PROBABILITIES, CLASS_IDS)
)
IMAGE_PIPELINE = ModelContract(
    "image_pipeline", (IMAGE,), (LABELS, PROBABILITIES, CLASS_IDS, PREPROCESS_US, INFER_US)
)


class ImageError(ValueError):
    """An upload that is not an image this pipeline takes; the message says why."""


def decode(data: bytes):
    """The upload as an RGB PIL image, or :class:`ImageError` naming the rule it broke."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("IMAGE: empty upload")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"IMAGE: {len(data):,} bytes, the limit is {MAX_IMAGE_BYTES:,}")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in FORMATS:
            raise ImageError(f"IMAGE: format {image.format}, expected one of {', '.join(FORMATS)}")
        if max(image.size) > MAX_SIDE:
            raise ImageError(
                f"IMAGE: {image.size[0]}x{image.size[1]} pixels, the limit is {MAX_SIDE} per side"
            )
        image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        # Pillow refuses, before decoding, what would decode to over twice its pixel limit:
        # a small file that would become a huge bitmap.
        raise ImageError(
            f"IMAGE: decodes to over {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
            f"bomb); the limit is {MAX_SIDE} pixels per side"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(
            f"IMAGE: not a readable {', '.join(FORMATS)} image ({type(err).__name__}: {err})"
        ) from None
    return image.convert("RGB")


def to_pixels(image) -> np.ndarray:
    """``[3, 224, 224]`` float32 model input from an RGB PIL image."""
    from PIL import Image

    width, height = image.size
    scale = RESIZE_TO / min(width, height)
    resized = image.resize(
        (max(IMAGE_SIZE, round(width * scale)), max(IMAGE_SIZE, round(height * scale))),
        Image.BILINEAR,
    )
    left = (resized.size[0] - IMAGE_SIZE) // 2
    top = (resized.size[1] - IMAGE_SIZE) // 2
    crop = resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    array = np.asarray(crop, dtype=np.float32)
    return np.ascontiguousarray(((array - PIXEL_MEAN) / PIXEL_SCALE).transpose(2, 0, 1))


def preprocess(data: bytes) -> np.ndarray:
    """Encoded bytes to model input (``ImageError`` for anything that is not an image)."""
    return to_pixels(decode(data))


def top_k(logits: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and class ids of the ``k`` best classes, per row, best first."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-probs, axis=1)[:, :k]
    return np.take_along_axis(probs, ids, axis=1).astype(np.float32), ids.astype(np.int64)
