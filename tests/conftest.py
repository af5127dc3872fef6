"""Shared fixtures: fixed seeds and a package home of the session for every test; a tiny
RecordIO dataset."""
import random

import cv2
import numpy as onp
import pytest

import gluon_arcface  # noqa: F401  (first: its thread policy applies before MXNet loads)
import mxnet as mx
from mxnet import npx

npx.set_np()  # as the chapter does (the package's modules also do when they load)


@pytest.fixture(scope='session')
def _package_home(tmp_path_factory):
    return tmp_path_factory.mktemp('gluon_arcface_home')


@pytest.fixture(autouse=True)
def package_home(_package_home, monkeypatch):
    """Generated datasets and converted models go to a folder of the test session, never to
    the user's ``~/.gluon_arcface`` (a test may point GLUON_ARCFACE_HOME elsewhere)."""
    monkeypatch.setenv('GLUON_ARCFACE_HOME', str(_package_home))
    return _package_home


@pytest.fixture(autouse=True)
def fixed_seeds():
    random.seed(0)
    onp.random.seed(0)
    mx.random.seed(0)
    yield


@pytest.fixture(scope='session')
def synthetic_faces(tmp_path_factory):
    """``make(identities, images, heldout, pairs, size, seed=0)``: a new faces-synthetic
    folder of those sizes (make_faces_synthetic), e.g. for a run of scripts/train.py."""
    from gluon_arcface.data.synthetic import make_faces_synthetic

    def make(identities, images, heldout, pairs, size, seed=0):
        root = tmp_path_factory.mktemp('faces-%d-%d-%d' % (identities, images, size))
        make_faces_synthetic(str(root), num_identities=identities, images_per_identity=images,
                             num_heldout=heldout, num_pairs=pairs, image_size=size, seed=seed)
        return str(root)
    return make


@pytest.fixture
def make_tiny_rec():
    """``make(folder, num_classes, per_class=8)``: train.rec/.idx + property of random 16x16 PNGs
    (classes in order, seeded); returns the ``(label, png bytes)`` samples written."""
    def make(folder, num_classes, per_class=8):
        import gluon_arcface as gaf
        rng = onp.random.RandomState(0)
        samples = [(label, cv2.imencode('.png', rng.randint(0, 255, (16, 16, 3), onp.uint8))[1]
                    .tobytes()) for label in range(num_classes) for _ in range(per_class)]
        gaf.write_face_rec(str(folder / 'train.rec'), samples)
        gaf.write_property(str(folder), num_classes, (16, 16), len(samples))
        return samples
    return make
