"""The embedded faces-synthetic dataset: deterministic, standard layout, held-out pairs, hard for
raw pixels."""
import os

import numpy as onp
import pytest

import gluon_arcface as gaf
from gluon_arcface import synthetic as S


def test_generation_is_deterministic_and_prefix_stable():
    a, la = S.generate_faces(3, 2, 32, seed=5)
    b, lb = S.generate_faces(5, 2, 32, seed=5)       # more identities: the first ones unchanged
    assert a.dtype == onp.uint8 and a.shape == (6, 32, 32, 3)
    assert onp.array_equal(a, b[:6]) and onp.array_equal(la, lb[:6])
    assert list(la) == [0, 0, 1, 1, 2, 2]
    c, _ = S.generate_faces(3, 2, 32, seed=6)
    assert not onp.array_equal(a, c)


def test_images_of_one_identity_differ_and_nuisance_zero_is_clean():
    imgs, _ = S.generate_faces(1, 4, 32, seed=0)
    assert all(not onp.array_equal(imgs[0], imgs[j]) for j in range(1, 4))
    clean, _ = S.generate_faces(2, 4, 32, seed=0, nuisance=0)
    # without nuisances the face itself (image centre) is the same in every image of an identity;
    # only background and clothes change
    centre = lambda x: x[:, 10:22, 10:22].astype(onp.float32)   # noqa: E731
    assert onp.array_equal(centre(clean[:4]), centre(clean[:4])[[1, 2, 3, 0]])
    assert not onp.array_equal(centre(clean[:4]), centre(clean[4:]))
    assert centre(imgs).std(axis=0).mean() > 5

def test_pairs_come_from_held_out_identities_only_and_are_balanced():
    plan = S.pair_identities(num_pairs=60, num_heldout=10, first_identity=40, seed=0)
    ids = set(plan[:, 0]) | set(plan[:, 2])
    assert ids <= set(range(40, 50)) and len(ids) == 10
    same = plan[:, 0] == plan[:, 2]
    assert same.sum() == 30 and list(same[:4]) == [True, False, True, False]
    images = {(i, j) for i, j in plan[:, :2]} | {(i, j) for i, j in plan[:, 2:]}
    assert len(images) == 2 * len(plan)                 # no image used twice
    with pytest.raises(ValueError):
        S.pair_identities(num_pairs=7)


def test_make_faces_synthetic_writes_the_standard_layout(tmp_path):
    root = str(tmp_path)
    S.make_faces_synthetic(root, num_identities=6, images_per_identity=3, num_heldout=4,
                           num_pairs=10, image_size=16)
    assert gaf.read_facerec_meta(root) == ((16, 16), 6)
    assert sorted(d for d in os.listdir(root) if d.isdigit()) == ['%08d' % i for i in range(6)]
    rec = gaf.FaceRecordDataset(os.path.join(root, 'train.rec'))
    folder = gaf.FaceFolderDataset(root)
    assert len(rec) == len(folder) == 18
    img, label = rec[4]
    assert img.shape == (16, 16, 3) and label == 1
    data, issame = gaf.load_bin(os.path.join(root, S.SYNTHETIC_VAL + '.bin'), (16, 16))
    assert data[0].shape == (20, 3, 16, 16) and len(issame) == 10 and sum(issame) == 5


def test_hub_generates_faces_synthetic_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('GLUON_ARCFACE_HOME', str(tmp_path))
    small = dict(num_identities=4, images_per_identity=2, num_heldout=4, num_pairs=8,
                 image_size=16)
    monkeypatch.setattr(S, 'SYNTHETIC_DEFAULTS', dict(S.SYNTHETIC_DEFAULTS, **small))
    data_dir = gaf.download_extract('faces-synthetic')
    assert data_dir == str(tmp_path / 'faces-synthetic')
    assert gaf.read_facerec_meta(data_dir) == ((16, 16), 4)
    assert os.path.exists(os.path.join(data_dir, 'synthetic_val.bin'))


def test_raw_pixels_verify_the_default_pairs_poorly():
    """The README's raw-pixel baseline: cosine of flattened pixels (+ flip), 10-fold."""
    d = S.SYNTHETIC_DEFAULTS
    images, issame = S.generate_pairs(d['num_pairs'], d['num_heldout'], d['image_size'],
                                      d['seed'], first_identity=d['num_identities'])
    images = S.jpeg_roundtrip(images)
    flat = images.reshape(len(images), -1).astype(onp.float32)
    flipped = images[:, :, ::-1].reshape(len(images), -1).astype(onp.float32)
    result = gaf.evaluate_embeddings(flat + flipped, issame)
    assert 0.55 <= result.accuracy <= 0.70, result
