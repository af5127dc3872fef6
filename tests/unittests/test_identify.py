"""Naming the faces of photos: every face of a group photo, scripts/identify.py (CSV, --json,
--draw, --crops, --save-gallery, --truth), and face_recognition's own k-NN test photos.

The group photos are composed from three real portraits that ship with the test dependencies
(skimage's astronaut and cameraman, matplotlib's Grace Hopper), pasted at other sizes, angles
and backgrounds than the photos the people are enrolled from.
"""
import csv
import glob
import io
import json
import os

import cv2
import numpy as onp
import pytest

pytest.importorskip('dlib')

import gluon_arcface as gaf  # noqa: E402
from gluon_arcface import detect, pasted_faces as pf  # noqa: E402

from test_detect import load_script, write  # noqa: E402

KNN = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'data',
                   'face_recognition_examples', 'knn_examples')


@pytest.fixture(scope='module')
def portraits():
    import skimage.data
    astronaut, hopper = pf.portrait_sources()
    camera = onp.repeat(skimage.data.camera()[:, :, None], 3, axis=2)
    return dict(astronaut=astronaut, grace_hopper=hopper,
                cameraman=pf.photo_source(camera, 'cameraman', 'cnn'))


def compose(faces, size=(300, 560), kind='gradient', seed=0):
    """A photo of ``size`` with each (source, face width, centre, angle) pasted."""
    img = pf.background(kind, size, onp.random.RandomState(seed))
    for src, width, centre, angle in faces:
        pf.paste(src, img, width, angle, centre)
    return img


@pytest.fixture(scope='module')
def known_dir(tmp_path_factory, portraits):
    """Two known people, two photos each (person folders), not the group photos' framings."""
    root = tmp_path_factory.mktemp('known')
    for n, name in enumerate(('astronaut', 'grace_hopper')):
        (root / name).mkdir()
        for k, (width, angle, kind) in enumerate(((130, 4.0, 'noise'), (100, -6.0, 'coffee'))):
            img = compose([(portraits[name], width, (150, 140), angle)], (280, 300), kind, n + k)
            write(root / name / ('%d.jpg' % k), img)
    return str(root)


@pytest.fixture(scope='module')
def group_photo(tmp_path_factory, portraits):
    """The two known people beside a stranger (the cameraman, whose turned face only dlib's CNN
    detector finds)."""
    img = compose([(portraits['astronaut'], 110, (100, 130), -3.0),
                   (portraits['grace_hopper'], 120, (280, 140), 5.0),
                   (portraits['cameraman'], 100, (450, 140), 0.0)], seed=3)
    path = tmp_path_factory.mktemp('group') / 'group.jpg'
    return write(path, img)


@pytest.fixture(scope='module')
def embedder():
    return gaf.FaceEmbedder.load('dlib-resnet-v1')


def test_find_faces_gives_every_face_and_sets_small_ones_apart(portraits):
    img = compose([(portraits['astronaut'], 110, (100, 130), 0.0),
                   (portraits['grace_hopper'], 120, (280, 140), 0.0),
                   (portraits['cameraman'], 100, (450, 140), 0.0)])
    faces, small = detect.find_faces(img, 'cnn')
    assert len(faces) == 3 and not small
    assert sorted(int(f.box[0] // 180) for f in faces) == [0, 1, 2]  # one in each third
    # HOG (the 'auto' chain's first step) misses the turned face and finds the other two.
    faces, _ = detect.find_faces(img)
    assert sorted(int(f.box[0] // 180) for f in faces) == [0, 1]
    faces, small = detect.find_faces(img, 'cnn', min_size=1000)
    assert not faces and len(small) == 3
    assert detect.find_faces(pf.background('grass', (200, 260), onp.random.RandomState(0))) \
        == ([], [])


def test_group_photo_names_the_known_and_not_the_stranger(known_dir, group_photo, embedder):
    gallery, skipped = gaf.enrol(known_dir, embedder)
    assert not skipped and gallery.names == ['astronaut', 'grace_hopper']
    assert list(gallery.counts()) == [2, 2]
    threshold = gaf.calibrate_threshold(gallery, model_threshold=embedder.threshold)
    assert threshold.rule == 'model'  # 4 mated trials are too few to calibrate on
    result = gaf.identify_photo(group_photo, embedder, gallery, threshold.value, top_k=2,
                                detector='cnn')
    assert result.error is None and len(result.faces) == 3
    by_place = {int(f.box[0] // 180): f for f in result.faces}
    assert by_place[0].name == 'astronaut' and by_place[1].name == 'grace_hopper'
    assert by_place[2].name == 'unknown' and by_place[2].status == 'unknown'
    assert by_place[2].candidates[0][1] < threshold.value <= min(
        by_place[0].similarity, by_place[1].similarity)
    assert result.embeddings.shape == (3, 128)


def test_faces_too_small_are_reported_as_such(known_dir, portraits, embedder):
    img = compose([(portraits['astronaut'], 160, (140, 150), 0.0),
                   (portraits['grace_hopper'], 50, (320, 150), 0.0)], (300, 400), seed=4)
    gallery, _ = gaf.enrol(known_dir, embedder)
    result = gaf.identify_photo(img, embedder, gallery, 0.9, min_size=80)
    assert [(f.name, f.status) for f in result.faces] == [('astronaut', 'identified'),
                                                         ('unknown', 'too small')]
    assert result.faces[1].similarity is None and result.faces[1].box[2] - \
        result.faces[1].box[0] < 80
    assert len(result.embeddings) == 1


def test_identify_script_csv_json_draw_and_unreadable_photo(known_dir, group_photo, tmp_path,
                                                            capsys):
    empty = write(tmp_path / 'empty.jpg', pf.background('grass', (200, 260),
                                                        onp.random.RandomState(0)))
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a photo')
    before = {p: open(p, 'rb').read() for p in glob.glob(known_dir + '/*/*')}
    out_json, draw = tmp_path / 'out.json', tmp_path / 'drawn'
    status = load_script('identify').main([
        '--known', known_dir, group_photo, str(broken), empty,
        '--json', str(out_json), '--draw', str(draw), '--detector', 'cnn',
        '--save-gallery', str(tmp_path / 'known.npz')])
    printed = capsys.readouterr()
    assert status == 1  # the broken photo; the others are identified all the same
    assert 'broken.jpg' in printed.err and 'threshold' in printed.err
    rows = list(csv.reader(io.StringIO(printed.out)))
    names = sorted(r[5] for r in rows if r[0] == group_photo)
    assert names == ['astronaut', 'grace_hopper', 'unknown']
    assert [r[5] for r in rows if r[0] == empty] == ['no_persons_found']
    results = json.loads(out_json.read_text())
    assert [r['photo'] for r in results] == [group_photo, str(broken), empty]
    assert 'error' in results[1] and results[1]['faces'] == [] and results[2]['faces'] == []
    for face in results[0]['faces']:
        x0, y0, x1, y1 = face['box']
        assert 0 <= x0 < x1 <= 560 and 0 <= y0 < y1 <= 300
        assert isinstance(face['similarity'], float) and face['name'] in (
            'astronaut', 'grace_hopper', 'unknown')
    assert sorted(os.listdir(str(draw))) == ['empty.jpg', 'group.jpg']
    assert cv2.imread(str(draw / 'group.jpg')).shape == (300, 560, 3)
    assert before == {p: open(p, 'rb').read() for p in before}  # --known untouched
    # The saved gallery gives the same answers without enrolling again.
    status = load_script('identify').main(['--known', str(tmp_path / 'known.npz'), group_photo,
                                           '--detector', 'cnn'])
    again = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert status == 0 and sorted(r[5] for r in again) == names


def test_identify_script_on_crops_with_truth(portraits, embedder, tmp_path, capsys):
    """--crops: each image is one face (crops aligned by another tool, here 112x112 ArcFace
    crops); --truth prints the protocol."""
    def crop(name, width, angle, seed):
        img = compose([(portraits[name], width, (150, 150), angle)], (300, 300), 'noise', seed)
        face = detect.find_face(img)
        return gaf.align_photo(img, face)
    (tmp_path / 'known' / 'astronaut').mkdir(parents=True)
    (tmp_path / 'known' / 'grace_hopper').mkdir()
    for k in range(2):
        write(tmp_path / 'known' / 'astronaut' / ('%d.png' % k), crop('astronaut', 120, 4 * k, k))
        write(tmp_path / 'known' / 'grace_hopper' / ('%d.png' % k),
              crop('grace_hopper', 120, -4 * k, k))
    probes = tmp_path / 'probes'
    probes.mkdir()
    truth = {'a.png': 'astronaut', 'b.png': 'grace_hopper', 'c.png': 'unknown'}
    write(probes / 'a.png', crop('astronaut', 150, -5, 7))
    write(probes / 'b.png', crop('grace_hopper', 90, 6, 8))
    write(probes / 'c.png', crop('cameraman', 110, 0, 9))
    (tmp_path / 'truth.json').write_text(json.dumps(truth))
    status = load_script('identify').main([
        '--known', str(tmp_path / 'known'), '--crops', str(probes), '--top-k', '2',
        '--truth', str(tmp_path / 'truth.json'), '--cmc', str(tmp_path / 'cmc.png'),
        '--json', str(tmp_path / 'out.json')])
    printed = capsys.readouterr()
    assert status == 0
    got = {os.path.basename(r['photo']): r['faces'] for r in json.loads(
        (tmp_path / 'out.json').read_text())}
    assert {k: [f['name'] for f in v] for k, v in got.items()} == {
        k: [v] for k, v in truth.items()}
    assert got['a.png'][0]['box'] == [0, 0, 112, 112]
    assert len(got['a.png'][0]['candidates']) == 2
    assert 'open-set accuracy at threshold' in printed.err and '100.00 %' in printed.err
    assert 'rank-1 100.00 %' in printed.err
    assert cv2.imread(str(tmp_path / 'cmc.png')) is not None


def test_gallery_of_another_model_is_refused_by_the_script(known_dir, tmp_path, capsys):
    gallery = gaf.FaceGallery(dict(name='other', sha1='0' * 40, framing='arcface',
                                   image_size=[112, 112], emb_size=128))
    gallery.add('x', onp.ones((1, 128)))
    gallery.save(str(tmp_path / 'other.npz'))
    status = load_script('identify').main(['--known', str(tmp_path / 'other.npz'),
                                           known_dir])
    err = capsys.readouterr().err
    assert status == 1 and 'other.npz was made with another model' in err


def test_identification_check_from_a_dataset(portraits, tmp_path):
    """write_identification_check: every known person's photos enrolled or probed once, the
    strangers' photos probed, truth.json naming each probe."""
    src = tmp_path / 'faces'
    for name in ('astronaut', 'grace_hopper', 'cameraman'):
        (src / name).mkdir(parents=True)
        for k in range(3):
            img = compose([(portraits[name], 110, (150, 150), 3 * k)], (300, 300), 'noise', k)
            write(src / name / ('%d.jpg' % k), img)
    data = tmp_path / 'data'
    gaf.prepare_dataset(str(src), str(data), detect='auto', progress=False)
    counts = gaf.write_identification_check(str(data), str(tmp_path / 'check'), known=2,
                                            gallery_per_person=2, probes_per_person=1,
                                            variant='recropped')
    assert counts == dict(known=2, strangers=1, gallery=4, mated_probes=2, nonmated_probes=1)
    truth = json.loads((tmp_path / 'check' / 'truth.json').read_text())
    assert sorted(truth.values())[-1] == 'unknown' and len(truth) == 3
    assert sorted(os.listdir(str(tmp_path / 'check' / 'probes'))) == sorted(truth)
    known = sorted(os.listdir(str(tmp_path / 'check' / 'known')))
    assert len(known) == 2 and set(known) | {'unknown'} == set(truth.values()) | set(known)
    with pytest.raises(gaf.FaceDataError, match='already exists'):
        gaf.write_identification_check(str(data), str(tmp_path / 'check'))


@pytest.mark.skipif(not os.path.isdir(KNN), reason='face_recognition_examples not here')
def test_face_recognition_knn_examples(tmp_path, capsys):
    """face_recognition's test_knn1: with train/ as the known people every face of the five
    test photos is named, the group photos included (a child of nobody known is unknown)."""
    photos = sorted(glob.glob(os.path.join(KNN, 'test', '*.jpg')))
    out = tmp_path / 'out.json'
    status = load_script('identify').main(['--known', os.path.join(KNN, 'train'),
                                           '--json', str(out)] + photos)
    assert status == 0
    named = {os.path.basename(r['photo']): sorted(f['name'] for f in r['faces'])
             for r in json.loads(out.read_text())}
    assert named == {
        'alex_lacamoire1.jpg': ['alex_lacamoire'],
        'johnsnow_test1.jpg': ['kit_harington'],
        'kit_with_rose.jpg': ['kit_harington', 'rose_leslie'],
        'obama1.jpg': ['obama'],
        'obama_and_biden.jpg': ['biden', 'obama', 'unknown'],
    }
