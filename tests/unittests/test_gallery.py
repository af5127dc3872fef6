"""The gallery of known people: enrolment, search by each scoring, the file (no pickle, digest,
model record, atomic save), threshold calibration and the 1:N protocol's figures. No model or
dlib is needed: embeddings are made by hand."""
import json
import os
import pickle
import zipfile

import numpy as onp
import pytest

import gluon_arcface as gaf
from gluon_arcface.eval import identification as ident
from gluon_arcface.eval.gallery import FaceGallery
from gluon_arcface.runtime.errors import ConfigError, FaceDataError

MODEL = dict(name='m', sha1='abc', framing='arcface', image_size=[112, 112], emb_size=4)


def unit(*v):
    v = onp.asarray(v, onp.float64)
    return v / onp.linalg.norm(v)


@pytest.fixture
def gallery():
    g = FaceGallery(MODEL)
    g.add('ann', [unit(1, 0, 0, 0), unit(1, 0.2, 0, 0)], ['a1.jpg', 'a2.jpg'])
    g.add('bob', [unit(0, 1, 0, 0)], ['b1.jpg'])
    g.add('cid', [unit(0, 0, 1, 0), unit(0, 0, 1, 0.5), unit(0, 0.3, 1, 0)])
    return g


def test_add_keeps_each_persons_rows_together_and_remove_renumbers(gallery):
    gallery.add('ann', [unit(1, 0, 0.1, 0)], ['a3.jpg'])  # more of a known person
    assert gallery.names == ['ann', 'bob', 'cid']
    assert list(gallery.owner) == [0, 0, 0, 1, 2, 2, 2]
    assert gallery.sources[:3] == ['a1.jpg', 'a2.jpg', 'a3.jpg']
    assert onp.allclose(onp.linalg.norm(gallery.embeddings, axis=1), 1, atol=1e-6)
    gallery.remove('bob')
    assert gallery.names == ['ann', 'cid'] and list(gallery.owner) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(KeyError):
        gallery.remove('bob')
    with pytest.raises(ValueError, match='size 3'):
        gallery.add('dan', onp.ones((1, 3)))
    with pytest.raises(ValueError, match='non-empty string'):
        gallery.add(' ann', onp.ones((1, 4)))


def test_search_by_each_scoring_matches_a_direct_computation(gallery):
    rng = onp.random.RandomState(1)
    probes = rng.randn(7, 4)
    probes_n = probes / onp.linalg.norm(probes, axis=1, keepdims=True)
    emb, owner = gallery.embeddings.astype(onp.float64), gallery.owner
    people = [emb[owner == i] for i in range(3)]
    expected = {
        'max': onp.stack([(probes_n @ p.T).max(1) for p in people], 1),
        'mean': onp.stack([(probes_n @ p.T).mean(1) for p in people], 1),
        'centroid': onp.stack([probes_n @ (p.mean(0) / onp.linalg.norm(p.mean(0)))
                               for p in people], 1)}
    for scoring, want in expected.items():
        assert onp.allclose(gallery.person_scores(probes, scoring), want, atol=1e-5)
        idx, top = gallery.search(probes, top_k=2, scoring=scoring)
        assert idx.shape == (7, 2)
        assert (idx[:, 0] == want.argmax(1)).all()
        assert onp.allclose(top[:, 0], want.max(1), atol=1e-5)
        assert (top[:, 0] >= top[:, 1]).all()
    idx, _ = gallery.search(probes, top_k=10)  # more than there are people: all of them
    assert idx.shape == (7, 3) and all(sorted(r) == [0, 1, 2] for r in idx)


def test_search_in_blocks_gives_the_same_answers(monkeypatch):
    rng = onp.random.RandomState(2)
    labels = rng.randint(0, 40, 300)  # 40 people, 1-15 faces each, in random order
    g = FaceGallery.from_arrays(labels, rng.randn(300, 8))
    probes = rng.randn(9, 8)
    whole = {s: g.person_scores(probes, s) for s in ('max', 'mean', 'centroid')}
    found = {s: g.search(probes, 6, s) for s in whole}
    for s, scores in whole.items():  # search is the top of person_scores
        want = onp.argsort(-scores, axis=1, kind='stable')[:, :6]
        assert (found[s][0] == want).all()
        assert onp.allclose(found[s][1], onp.take_along_axis(scores, want, 1), atol=1e-6)
    monkeypatch.setattr('gluon_arcface.eval.gallery.PROBE_BLOCK', 2)
    monkeypatch.setattr('gluon_arcface.eval.gallery.CHUNK_ROWS', 7)  # about a person a block
    for s, scores in whole.items():
        assert onp.allclose(g.person_scores(probes, s), scores, atol=1e-6)
        idx, top = g.search(probes, 6, s)
        assert (idx == found[s][0]).all() and onp.allclose(top, found[s][1], atol=1e-6)


def test_save_and_load_round_trip(gallery, tmp_path):
    path = str(tmp_path / 'known.npz')
    gallery.save(path, extra=dict(threshold=0.5))
    back = FaceGallery.load(path, model=MODEL)
    assert back.names == gallery.names and back.sources == gallery.sources
    assert onp.array_equal(back.embeddings, gallery.embeddings)
    assert back.model == MODEL and back.extra == dict(threshold=0.5)
    probes = onp.random.RandomState(3).randn(4, 4)
    assert onp.array_equal(back.person_scores(probes), gallery.person_scores(probes))


def test_another_models_gallery_is_refused(gallery, tmp_path):
    path = str(tmp_path / 'known.npz')
    gallery.save(path)
    with pytest.raises(ConfigError, match='known.npz was made with another model'):
        FaceGallery.load(path, model=dict(MODEL, sha1='def'))
    with pytest.raises(ConfigError, match='known.npz was made with another model'):
        FaceGallery.load(path, model=dict(MODEL, framing='dlib-chip'))
    with pytest.raises(ConfigError, match='4-d embeddings'):
        gallery.check_probes(onp.zeros((2, 5)))


def test_corrupt_truncated_and_edited_files_are_clear_errors(gallery, tmp_path):
    path = tmp_path / 'known.npz'
    gallery.save(str(path))
    data = path.read_bytes()
    (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
    with pytest.raises(FaceDataError, match='cut.npz: corrupt or truncated'):
        FaceGallery.load(str(tmp_path / 'cut.npz'))
    (tmp_path / 'text.npz').write_text('hello')
    with pytest.raises(FaceDataError, match='text.npz'):
        FaceGallery.load(str(tmp_path / 'text.npz'))
    # Edited by hand: an embedding changed and the file written again with NumPy.
    with onp.load(str(path)) as z:
        arrays = {k: z[k] for k in z.files}
    arrays['embeddings'] = arrays['embeddings'].copy()
    arrays['embeddings'][0, 0] += 0.1
    onp.savez(str(tmp_path / 'edited.npz'), **arrays)
    with pytest.raises(FaceDataError, match='edited.npz: .*digest'):
        FaceGallery.load(str(tmp_path / 'edited.npz'))
    # Names that do not match the embeddings.
    meta = json.loads(bytes(arrays['meta']).decode())
    meta['names'] = meta['names'][:2]
    arrays = dict(arrays, embeddings=gallery.embeddings,
                  meta=onp.frombuffer(json.dumps(meta).encode(), onp.uint8))
    onp.savez(str(tmp_path / 'names.npz'), **arrays)
    with pytest.raises(FaceDataError, match='names.npz: inconsistent gallery'):
        FaceGallery.load(str(tmp_path / 'names.npz'))
    with pytest.raises(FaceDataError, match='missing.npz: gallery file not found'):
        FaceGallery.load(str(tmp_path / 'missing.npz'))


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_pickle_is_refused_without_running_it(tmp_path):
    evil = _Evil()
    evil.target = str(tmp_path / 'ran')
    path = tmp_path / 'known.npz'
    path.write_bytes(pickle.dumps({'embeddings': evil}))
    with pytest.raises(FaceDataError, match='known.npz: not a gallery file.*never a pickle'):
        FaceGallery.load(str(path))
    # The same inside an .npz: an object array saved with allow_pickle.
    onp.savez(str(tmp_path / 'obj.npz'), embeddings=onp.array([evil], dtype=object),
              owner=onp.zeros(1, onp.int32), meta=onp.zeros(1, onp.uint8))
    with pytest.raises(FaceDataError, match='obj.npz: not a gallery file'):
        FaceGallery.load(str(tmp_path / 'obj.npz'))
    assert not (tmp_path / 'ran').exists()


def test_an_interrupted_save_leaves_the_old_gallery(gallery, tmp_path, monkeypatch):
    path = str(tmp_path / 'known.npz')
    gallery.save(path)
    before = open(path, 'rb').read()
    gallery.add('dan', [unit(0, 0, 0, 1)])

    def savez_then_fail(f, **arrays):
        f.write(b'PK\x03\x04 half a zip')
        raise KeyboardInterrupt
    monkeypatch.setattr(onp, 'savez', savez_then_fail)
    with pytest.raises(KeyboardInterrupt):
        gallery.save(path)
    assert open(path, 'rb').read() == before
    assert os.listdir(str(tmp_path)) == ['known.npz']  # no temporary file left
    assert FaceGallery.load(path).names == ['ann', 'bob', 'cid']


def test_saved_gallery_is_a_zip_of_plain_arrays(gallery, tmp_path):
    path = str(tmp_path / 'known.npz')
    gallery.save(path)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ['embeddings.npy', 'meta.npy', 'owner.npy']


# ----------------------------------------------------------------------------- threshold

def clusters(people, per_person, spread, seed=0, dim=32):
    """Embeddings of ``people`` around random centres -> (names list, (n, dim) array)."""
    rng = onp.random.RandomState(seed)
    centres = rng.randn(people, dim)
    names, rows = [], []
    for p in range(people):
        for _ in range(per_person):
            names.append('p%02d' % p)
            rows.append(centres[p] + spread * rng.randn(dim))
    return names, onp.stack(rows)


def gallery_of(names, rows):
    g = FaceGallery(dict(name='clusters'))
    for name in sorted(set(names)):
        g.add(name, rows[[i for i, n in enumerate(names) if n == name]])
    return g


def test_calibrated_threshold_separates_people_from_strangers():
    names, rows = clusters(12, 4, 0.5)
    g = gallery_of(names, rows)
    t = gaf.calibrate_threshold(g)
    assert t.rule == 'calibrated' and t.details['mated_trials'] == 48
    trials = ident.loo_trials(g)
    assert trials['correct'].all()  # the clusters are far apart
    assert trials['impostor'].max() < t.value < trials['genuine'].min()
    # New faces of the same people pass it, faces of new people do not.
    more, more_rows = clusters(12, 2, 0.5, seed=0)
    strangers, stranger_rows = clusters(6, 2, 0.5, seed=7)
    probes = onp.concatenate([more_rows, stranger_rows])
    labels = more + ['unknown'] * len(strangers)
    result = gaf.evaluate_identification(g, probes, labels, t.value)
    assert result['open_set_accuracy'] > 0.95


def test_threshold_falls_back_without_enough_mated_trials():
    names, rows = clusters(5, 1, 0.3)
    g = gallery_of(names, rows)
    impostor = onp.sort(ident.loo_trials(g, 'centroid')['impostor'])
    t = gaf.calibrate_threshold(g)
    assert t.rule == 'fpir' and t.value > impostor[-1]  # 10 % of 5 trials: none pass
    assert gaf.calibrate_threshold(g, model_threshold=-0.5) == t  # lower: not used
    high = gaf.calibrate_threshold(g, model_threshold=0.99)
    assert high.rule == 'model' and high.value == 0.99
    assert high.details['fpir_threshold'] == t.value
    names, rows = clusters(20, 1, 0.3)
    t = gaf.calibrate_threshold(gallery_of(names, rows))
    impostor = onp.sort(ident.loo_trials(gallery_of(names, rows), 'centroid')['impostor'])
    assert impostor[-3] < t.value < impostor[-2]  # 2 of 20 trials pass
    with pytest.raises(ValueError, match='one person'):
        gaf.calibrate_threshold(gallery_of(['a', 'a'], rows[:2]))


def test_leave_one_out_by_each_scoring_matches_a_smaller_gallery():
    names, rows = clusters(4, 3, 0.8, seed=3, dim=8)
    g = gallery_of(names, rows)
    for scoring in ('max', 'mean', 'centroid'):
        trials = ident.loo_trials(g, scoring)
        for i in (0, 4, 11):  # face i left out: the gallery without it scores it the same
            keep = [j for j in range(len(names)) if j != i]
            smaller = gallery_of([names[j] for j in keep], rows[keep])
            scores = smaller.person_scores(rows[i:i + 1], scoring)[0]
            own = smaller.names.index(names[i])
            assert onp.isclose(trials['genuine'][i], scores[own], atol=1e-5)
            assert onp.isclose(trials['impostor'][i], onp.delete(scores, own).max(), atol=1e-5)


# ----------------------------------------------------------------------------- protocol

def test_protocol_figures_on_hand_made_scores():
    g = FaceGallery(dict(name='axes'))
    for k in range(4):  # person k is the k-th axis
        g.add('p%d' % k, onp.eye(4)[k])
    probes = onp.array([
        [0.9, 0.1, 0, 0],     # p0, rank 1, score ~0.99
        [0.5, 0.6, 0, 0],     # p0, rank 2
        [0, 0, 0.7, 0.69],    # p2, rank 1, score ~0.71
        [0.1, 0.2, 0.3, 0.9],  # p3, rank 1
        [0.6, 0.6, 0.5, 0.1],  # stranger, best ~0.61
        [0.3, 0.3, 0.3, 0.3],  # stranger, best 0.5
    ])
    labels = ['p0', 'p0', 'p2', 'p3', 'unknown', 'nobody']  # a name not enrolled: a stranger
    r = gaf.evaluate_identification(g, probes, labels, threshold=0.7)
    assert (r['mated'], r['nonmated']) == (4, 2)
    assert r['cmc'][:2] == [0.75, 1.0] and r['rank1'] == 0.75 and r['rank5'] == 1.0
    # FPIR 0.01 of 2 strangers: none may pass, the threshold sits just above the best (0.61).
    dir01, t01 = r['dir_at_fpir'][0.01]
    assert 0.606 < t01 < 0.607 and dir01 == 0.75
    # FPIR 0.1: still none of 2 may pass (floor(0.2) = 0).
    assert r['dir_at_fpir'][0.1] == (dir01, t01)
    # Open set at 0.7: p0 (0.99), p2 (0.71), p3 (0.93) named, the rank-2 probe is wrong;
    # both strangers stay below 0.7.
    assert r['open_set_accuracy'] == 5 / 6
    assert r['mated_accuracy'] == 0.75 and r['nonmated_accuracy'] == 1.0
    r = gaf.evaluate_identification(g, probes, labels, threshold=0.8)
    assert r['open_set_accuracy'] == 4 / 6  # p2 at 0.71 is now unknown


def test_identify_embeddings_names_or_unknown(gallery):
    out = gaf.identify_embeddings(gallery, [unit(1, 0.1, 0, 0), unit(0.5, 0.5, 0.5, 0.5)],
                                  threshold=0.9, top_k=2)
    assert out[0][0] == 'ann' and out[0][1] > 0.99 and len(out[0][2]) == 2
    assert out[1][0] == 'unknown' and out[1][2][0][0] in gallery.names


def test_truth_file_errors_name_the_file(tmp_path):
    (tmp_path / 't.json').write_text('["a"]')
    with pytest.raises(FaceDataError, match='t.json: expected a JSON object'):
        ident.read_truth(str(tmp_path / 't.json'))
    (tmp_path / 'u.json').write_text('{')
    with pytest.raises(FaceDataError, match='u.json: not JSON'):
        ident.read_truth(str(tmp_path / 'u.json'))


def test_from_arrays_equals_adding_person_by_person(gallery):
    labels = ['cid', 'ann', 'cid', 'bob', 'ann', 'cid']
    emb, owner = gallery.embeddings, gallery.owner
    by_person = {n: list(emb[owner == i]) for i, n in enumerate(gallery.names)}
    rows = [by_person[n].pop(0) for n in labels]
    bulk = FaceGallery.from_arrays(labels, rows, MODEL, sources=range(6))
    assert bulk.names == ['cid', 'ann', 'bob'] and list(bulk.counts()) == [3, 2, 1]
    assert bulk.sources == ['0', '2', '5', '1', '4', '3']
    probes = onp.random.RandomState(4).randn(5, 4)
    for scoring in ('max', 'mean', 'centroid'):
        a, b = bulk.person_scores(probes, scoring), gallery.person_scores(probes, scoring)
        assert onp.allclose(a[:, [1, 2, 0]], b, atol=1e-6)
