"""Training augmentation: deterministic with a seed, shapes/dtypes/ranges kept, each operation
doing what it says, and no augmentation meaning identical images."""
import dataclasses
import random

import numpy as onp
import pytest

from gluon_arcface.data.augment import (AUGMENT_PRESETS, PROBABILITIES, AugmentSettings,
                                   FaceAugment, augment_settings)
from gluon_arcface.data.datasets import FaceTrainTransform
from gluon_arcface.data.images import resize_face


def faces(n=6, size=32, seed=0):
    """Smooth random images (gradients plus a blob), RGB uint8."""
    rng = onp.random.RandomState(seed)
    yy, xx = onp.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = rng.uniform(40, 200, size=3)
        img = base + 50 * onp.stack([xx, yy, xx * yy], axis=2) + rng.normal(0, 5, (size, size, 3))
        out.append(onp.clip(img, 0, 255).astype(onp.uint8))
    return out


def only(name, **ranges):
    return AugmentSettings(**{name: 1.0}, **ranges)


def test_no_augmentation_gives_identical_images():
    augment = FaceAugment(AUGMENT_PRESETS['none'])
    for img in faces():
        onp.testing.assert_array_equal(augment(img, random.Random(0)), img)
    transform = FaceTrainTransform(augment=AUGMENT_PRESETS['none'], seed=3)
    img = faces(1)[0]
    onp.testing.assert_array_equal(transform(img),
                                   img.transpose(2, 0, 1).astype(onp.float32) * (1.0 / 255))
    assert not AUGMENT_PRESETS['none'].active and AUGMENT_PRESETS['standard'].active


@pytest.mark.parametrize('preset', ['flip', 'standard'])
def test_seeded_augmentation_is_deterministic(preset):
    images = faces(20)

    def run(seed):
        transform = FaceTrainTransform(augment=AUGMENT_PRESETS[preset], seed=seed)
        return [transform(img) for img in images]

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        onp.testing.assert_array_equal(a, b)
    assert any(not onp.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize('name', PROBABILITIES)
def test_each_operation_keeps_shape_dtype_and_range(name):
    augment = FaceAugment(only(name))
    rng = random.Random(0)
    changed = 0
    for img in faces(size=40):
        out = augment(img, rng)
        assert out.shape == img.shape and out.dtype == onp.uint8
        changed += not onp.array_equal(out, img)
    assert changed >= 4  # the operation does something
    transform = FaceTrainTransform(augment=only(name), seed=0)
    x = transform(faces(1, size=40)[0])
    assert x.shape == (3, 40, 40) and x.dtype == onp.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_flip_is_a_mirror_and_gray_has_equal_channels():
    img = faces(1)[0]
    onp.testing.assert_array_equal(FaceAugment(only('flip'))(img, random.Random(0)),
                                   img[:, ::-1])
    gray = FaceAugment(only('gray'))(img, random.Random(0))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_crop_keeps_the_face_in_place():
    img = faces(1, size=64)[0] | 1  # no black pixel of its own
    augment = FaceAugment(only('crop', crop_scale=(0.3, 0.6)))
    rng = random.Random(1)
    for _ in range(10):
        out = augment(img, rng)
        kept = out.any(axis=2)
        assert 0.2 < kept.mean() < 0.7  # about the area fraction asked for
        onp.testing.assert_array_equal(out[kept], img[kept])  # kept pixels did not move
        rows, cols = onp.nonzero(kept)  # and they form one box
        assert kept[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_rotation_is_small_and_low_resolution_blurs():
    img = faces(1, size=64)[0]
    rotated = FaceAugment(only('rotate', rotate_deg=5))(img, random.Random(0))
    assert onp.abs(rotated.astype(int) - img).mean() < 12  # a few degrees: still close
    low = FaceAugment(only('lowres', lowres_scale=(0.25, 0.25)))(img, random.Random(0))
    # Detail is gone: the high frequencies (pixel-to-pixel differences) shrink.
    assert onp.abs(onp.diff(low.astype(int), axis=1)).mean() < \
        onp.abs(onp.diff(img.astype(int), axis=1)).mean()


def test_color_jitter_stays_within_its_factors():
    img = onp.full((8, 8, 3), 100, onp.uint8)
    settings = dataclasses.replace(only('color'), brightness=0.5, contrast=0.0, saturation=0.0)
    rng = random.Random(0)
    values = {int(FaceAugment(settings)(img, rng)[0, 0, 0]) for _ in range(50)}
    assert min(values) >= 50 and max(values) <= 150 and len(values) > 10


def test_settings_validate_and_presets_combine_with_knobs():
    with pytest.raises(ValueError, match='probability'):
        AugmentSettings(flip=1.5)
    with pytest.raises(ValueError, match='crop_scale'):
        AugmentSettings(crop_scale=(0.5, 0.2))
    settings = augment_settings('standard', crop=0.5, gray=None)
    assert settings.crop == 0.5 and settings.gray == AUGMENT_PRESETS['standard'].gray
    with pytest.raises(ValueError, match='unknown augmentation'):
        augment_settings('heavy')


def test_resize_for_a_smaller_input():
    img = faces(1, size=112)[0]
    small = FaceTrainTransform(augment=AUGMENT_PRESETS['none'], image_size=(64, 64))(img)
    assert small.shape == (3, 64, 64)
    onp.testing.assert_allclose(small, resize_face(img, (64, 64)).transpose(2, 0, 1) / 255.0,
                                atol=1e-6)
    assert resize_face(img, (112, 112)) is img
