"""Checks made from a dataset (gluon_arcface.data.id_split), without a model: a variant of a
dataset keeps its identities and pairs; an identification check splits people and probes."""
import json
import os

import numpy as onp
import pytest

import gluon_arcface as gaf


@pytest.mark.parametrize('variant', ['degraded', 'recropped'])
def test_dataset_variant_keeps_identities_and_pairs(tmp_path, make_tiny_rec, variant):
    src = tmp_path / 'src'
    src.mkdir()
    make_tiny_rec(src, 3, per_class=4)
    rng = onp.random.RandomState(0)
    pngs = [__import__('cv2').imencode('.png', rng.randint(0, 255, (16, 16, 3), onp.uint8))[1]
            .tobytes() for _ in range(4)]
    gaf.write_bin(str(src / 'v.bin'), pngs, [True, False])
    out = gaf.write_dataset_variant(str(src), str(tmp_path / 'out'), variant, seed=1)
    a, b = gaf.open_face_dataset(str(src)), gaf.open_face_dataset(out)
    assert [int(a[i][1]) for i in range(len(a))] == [int(b[i][1]) for i in range(len(b))]
    assert gaf.read_facerec_meta(out) == ((16, 16), 3)
    changed = [onp.abs(a[i][0].asnumpy().astype(int) - b[i][0].asnumpy()).mean()
               for i in range(len(a))]
    assert min(changed) > 0  # every image changed
    new_images, same = gaf.read_bin(os.path.join(out, 'v.bin'))
    assert list(same) == [True, False] and len(new_images) == 4
    with pytest.raises(gaf.FaceDataError, match='already exists'):
        gaf.write_dataset_variant(str(src), out, variant)
    with pytest.raises(ValueError, match='variant'):
        gaf.write_dataset_variant(str(src), str(tmp_path / 'x'), 'none')


def test_identification_check_splits_people(tmp_path, make_tiny_rec):
    src = tmp_path / 'src'
    src.mkdir()
    make_tiny_rec(src, 6, per_class=5)
    counts = gaf.write_identification_check(str(src), str(tmp_path / 'check'), known=4,
                                            gallery_per_person=3, probes_per_person=2, seed=2)
    assert counts == dict(known=4, strangers=2, gallery=12, mated_probes=8, nonmated_probes=4)
    truth = json.loads((tmp_path / 'check' / 'truth.json').read_text())
    known = sorted(os.listdir(str(tmp_path / 'check' / 'known')))
    assert sorted(set(truth.values())) == sorted(known + ['unknown'])
    assert all(len(os.listdir(str(tmp_path / 'check' / 'known' / k))) == 3 for k in known)
    assert sorted(os.listdir(str(tmp_path / 'check' / 'probes'))) == sorted(truth)
