"""Training augmentation of aligned face crops, in the decoding workers (OpenCV on uint8).

Each operation has its own probability and ranges (:class:`AugmentSettings`); the named presets
(``AUGMENT_PRESETS``): ``none``; ``flip`` (the chapter's random left-right flip); ``standard``
(flip, and with small probabilities each: a small rotation, a random crop kept in place, low
resolution, colour jitter, greyscale), after the augmentations of AdaFace and arcface_torch.
Aligned faces keep their landmarks at fixed places, so the geometric operations stay mild: the
crop keeps the pixels it keeps where they were (the rest becomes black), the rotation is a few
degrees about the centre.

:class:`FaceAugment` applies the settings to one RGB uint8 (H, W, 3) image with a given
``random.Random``; the result has the same shape and dtype.
"""
import dataclasses
import math
import typing

import cv2
import numpy as np

__all__ = ['AugmentSettings', 'AUGMENT_PRESETS', 'AUGMENT_PRESET_NAMES', 'augment_settings',
           'FaceAugment', 'PROBABILITIES']

Range = typing.Tuple[float, float]
PROBABILITIES = ('flip', 'rotate', 'crop', 'lowres', 'color', 'gray')


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """The probability of each operation (named by it, in [0, 1]) and its ranges, in the order
    the operations are applied."""

    flip: float = 0.0            # left-right flip
    rotate: float = 0.0          # rotation about the centre by U(-rotate_deg, rotate_deg)
    rotate_deg: float = 10.0
    crop: float = 0.0            # keep a random box of area fraction U(crop_scale) and aspect
    crop_scale: Range = (0.4, 1.0)  # ratio log-U(crop_ratio), in place; black elsewhere
    crop_ratio: Range = (0.75, 1.3333)
    lowres: float = 0.0          # down to a side fraction U(lowres_scale), back up
    lowres_scale: Range = (0.25, 0.75)
    color: float = 0.0           # brightness, contrast, saturation factors U(1 -/+ x)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    gray: float = 0.0            # greyscale (copied to the three channels)

    def __post_init__(self):
        for name in PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError('%s must be a probability in [0, 1], got %r' % (name, value))
        for name in ('crop_scale', 'crop_ratio', 'lowres_scale'):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError('%s must be a range 0 < low <= high, got %r'
                                 % (name, getattr(self, name)))
        if self.crop_scale[1] > 1 or self.lowres_scale[1] > 1:
            raise ValueError('crop_scale and lowres_scale are fractions of the image (<= 1)')
        for name in ('brightness', 'contrast', 'saturation'):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError('%s must be in [0, 1), got %r' % (name, getattr(self, name)))

    @property
    def active(self):
        """Whether any operation can change an image."""
        return any(getattr(self, name) > 0 for name in PROBABILITIES)


AUGMENT_PRESETS = {
    'none': AugmentSettings(),
    'flip': AugmentSettings(flip=0.5),
    'standard': AugmentSettings(flip=0.5, rotate=0.2, crop=0.2, lowres=0.2,
                                color=0.2, gray=0.1),
}
AUGMENT_PRESET_NAMES = tuple(AUGMENT_PRESETS)


def augment_settings(preset='flip', **overrides):
    """The settings of a preset (``AUGMENT_PRESETS``) with some fields replaced; fields given as
    None keep the preset's value."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError('unknown augmentation %r: expected one of %s'
                         % (preset, ', '.join(AUGMENT_PRESETS)))
    given = {k: (tuple(v) if isinstance(v, list) else v)
             for k, v in overrides.items() if v is not None}
    return dataclasses.replace(AUGMENT_PRESETS[preset], **given)


_UPSAMPLING = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC)


class FaceAugment:
    """``augment(img, rng) -> img``: the operations of ``settings`` on an RGB uint8 (H, W, 3)
    image, each with its probability, drawn from ``rng`` (a ``random.Random``)."""

    def __init__(self, settings=None):
        self.settings = settings or AugmentSettings()

    def __call__(self, img, rng):
        s = self.settings
        if s.flip and rng.random() < s.flip:
            img = img[:, ::-1]
        if s.rotate and rng.random() < s.rotate:
            img = self.rotate(img, rng.uniform(-s.rotate_deg, s.rotate_deg))
        if s.crop and rng.random() < s.crop:
            img = self.crop_in_place(img, rng)
        if s.lowres and rng.random() < s.lowres:
            img = self.low_resolution(img, rng.uniform(*s.lowres_scale),
                                      _UPSAMPLING[rng.randrange(len(_UPSAMPLING))])
        if s.color and rng.random() < s.color:
            img = self.color_jitter(img, rng)
        if s.gray and rng.random() < s.gray:
            img = cv2.cvtColor(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY),
                               cv2.COLOR_GRAY2RGB)
        return img

    @staticmethod
    def rotate(img, degrees):
        height, width = img.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0)
        return cv2.warpAffine(np.ascontiguousarray(img), matrix, (width, height),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    def crop_in_place(self, img, rng):
        """A random box (area and aspect ratio as torchvision's RandomResizedCrop draws them),
        kept where it is; everything else black (AdaFace's crop augmentation)."""
        height, width = img.shape[:2]
        area = height * width
        lo, hi = self.settings.crop_ratio
        for _ in range(10):
            target = area * rng.uniform(*self.settings.crop_scale)
            ratio = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                out = np.zeros_like(img)
                out[top:top + h, left:left + w] = img[top:top + h, left:left + w]
                return out
        return img

    @staticmethod
    def low_resolution(img, fraction, interpolation):
        height, width = img.shape[:2]
        small = cv2.resize(np.ascontiguousarray(img),
                           (max(1, round(width * fraction)), max(1, round(height * fraction))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=interpolation)

    def color_jitter(self, img, rng):
        s = self.settings
        out = img.astype(np.float32)
        gray_weights = np.array([0.299, 0.587, 0.114], np.float32)
        for op in rng.sample(('brightness', 'contrast', 'saturation'), 3):  # random order
            factor = rng.uniform(1 - getattr(s, op), 1 + getattr(s, op))
            if op == 'brightness':
                out *= factor
            elif op == 'contrast':
                mean = float((out @ gray_weights).mean())
                out = (out - mean) * factor + mean
            else:
                gray = (out @ gray_weights)[:, :, None]
                out = (out - gray) * factor + gray
        return np.clip(out, 0, 255).astype(np.uint8)
