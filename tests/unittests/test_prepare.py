"""Dataset tools: per-person photo folders -> dataset layouts, pairs.txt -> .bin, alignment, check.

Fixtures are LFW-style folders (``Ann_Smith/Ann_Smith_0001.jpg``) of tiny uniformly coloured
photos written with cv2.imwrite: the red channel encodes the person, the green one the photo.
"""
import importlib.util
import os
import pickle

import cv2
import numpy as onp
import pytest

import mxnet as mx

from gluon_arcface import check, prepare
from gluon_arcface.data.align import (ARCFACE_TEMPLATE, align_face, check_landmarks,
                                 estimate_similarity, reference_landmarks)
from gluon_arcface.data.binfile import load_bin, read_bin
from gluon_arcface.data.images import decode_image
from gluon_arcface.data.datasets import FaceFolderDataset, FaceRecordDataset, read_facerec_meta
from gluon_arcface.runtime.errors import FaceDataError

NAMES = ['Ann_Smith', 'Bob_Jones', 'Carl_Wu', 'Dee_Lee', 'Eve_Park', 'Finn_Ode']
COUNTS = [3, 2, 4, 1, 3, 2]
SIZE = (16, 16)
SCRIPT = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts', 'prepare_data.py')


def colour(person, photo):
    """RGB of photo ``photo`` (1-based) of person number ``person``."""
    return 30 + 35 * person, 40 + 30 * photo, 100


def make_lfw(root, names=NAMES, counts=COUNTS, size=(20, 24)):
    for name, n in zip(names, counts):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            img = onp.empty(size + (3,), onp.uint8)
            img[:] = colour(NAMES.index(name), i)
            assert cv2.imwrite(str(folder / ('%s_%04d.jpg' % (name, i))),
                               cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (root / 'README.txt').write_text('not a person')
    return root


def person_of(rgb):
    """Which person's colour an RGB image has (JPEG keeps a flat colour within a few levels)."""
    r = float(onp.asarray(rgb)[..., 0].mean())
    k = int(round((r - 30) / 35))
    assert abs(r - (30 + 35 * k)) < 4
    return NAMES[k]


@pytest.fixture
def lfw(tmp_path):
    return make_lfw(tmp_path / 'photos')


def load_script():
    spec = importlib.util.spec_from_file_location('prepare_data_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_labels(names):
    return [c for c, name in enumerate(names) for _ in range(COUNTS[NAMES.index(name)])]


# ----------------------------------------------------------------------------- folders -> dataset

def test_prepare_writes_both_layouts(lfw, tmp_path):
    out = tmp_path / 'data'
    summary = prepare.prepare_dataset(lfw, out, image_size=SIZE, progress=False)
    assert (summary['identities'], summary['images'], summary['resized']) == (6, 15, 15)
    assert summary['skipped'] == [] and summary['dropped'] == [] and summary['holdout'] == []
    assert 'resized 15 images' in prepare.format_summary(summary)
    assert sorted(os.listdir(tmp_path)) == ['data', 'photos']  # no staging folder left

    assert (out / 'property').read_text() == '6,16,16\n15\n'
    assert read_facerec_meta(str(out)) == (SIZE, 6)
    assert (out / 'identities.tsv').read_text().splitlines() == [
        '%d\t%s' % (i, n) for i, n in enumerate(NAMES)]
    labels = expected_labels(NAMES)

    rec = FaceRecordDataset(str(out / 'train.rec'), num_classes=6, image_size=SIZE)
    assert [rec.label_of(i) for i in range(len(rec))] == labels
    assert rec.identity_ranges == {0: (1, 4), 1: (4, 6), 2: (6, 10), 3: (10, 11),
                                   4: (11, 14), 5: (14, 16)}
    folders = FaceFolderDataset(str(out), num_classes=6, image_size=SIZE)
    assert sorted(os.listdir(out / '00000000')) == ['Ann_Smith_0001.jpg', 'Ann_Smith_0002.jpg',
                                                    'Ann_Smith_0003.jpg']
    for ds in (rec, folders):
        for i, label in enumerate(labels):
            img, lab = ds[i]
            assert lab == label and img.shape == SIZE + (3,)
            assert person_of(img.asnumpy()) == NAMES[label]  # RGB order survived

    # MXNet's own reader sees the InsightFace header layout.
    reader = mx.recordio.MXIndexedRecordIO(str(out / 'train.idx'), str(out / 'train.rec'), 'r')
    header, _ = mx.recordio.unpack(reader.read_idx(0))
    assert header.flag == 2 and list(header.label) == [16, 22]
    for key in (1, 7, 15):
        header, bgr = mx.recordio.unpack_img(reader.read_idx(key))
        assert header.label == labels[key - 1]
        assert person_of(bgr[..., ::-1]) == NAMES[labels[key - 1]]
    header, _ = mx.recordio.unpack(reader.read_idx(16 + 2))
    assert list(header.label) == [6, 10]
    reader.close()


def test_folders_only_same_size_not_resized(tmp_path):
    src = make_lfw(tmp_path / 'photos', size=SIZE)
    out = tmp_path / 'data'
    summary = prepare.prepare_dataset(src, out, image_size=SIZE, formats=['folders'],
                                      progress=False)
    assert summary['resized'] == 0 and summary['images'] == 15
    assert not (out / 'train.rec').exists()
    assert len(FaceFolderDataset(str(out), num_classes=6, image_size=SIZE)) == 15


def test_holdout_min_images_and_val_bin(lfw, tmp_path):
    out = tmp_path / 'data'
    summary = prepare.prepare_dataset(lfw, out, image_size=SIZE, holdout=2, val_name='mine',
                                      num_pairs=6, min_images=2, seed=4, progress=False)
    held = summary['holdout']
    assert summary['dropped'] == [('Dee_Lee', 1)] and len(held) == 2
    train_names = [n for n in NAMES if n not in held and n != 'Dee_Lee']
    assert summary['identities'] == 3
    assert (out / 'identities.tsv').read_text().splitlines() == [
        '%d\t%s' % (i, n) for i, n in enumerate(train_names)]
    assert (out / 'mine_identities.txt').read_text().split() == held
    assert (out / 'property').read_text().splitlines() == [
        '3,16,16', str(sum(COUNTS[NAMES.index(n)] for n in train_names))]
    rec = FaceRecordDataset(str(out / 'train.rec'), num_classes=3, image_size=SIZE)
    seen = {person_of(rec[i][0].asnumpy()) for i in range(len(rec))}
    assert seen == set(train_names)  # held-out people are not trained on

    (data, flipped), issame = load_bin(str(out / 'mine.bin'), SIZE)
    assert data.shape == (12, 3, 16, 16) and flipped.shape == data.shape
    assert list(issame) == [True, False] * 3 and summary['pairs'] == 6
    images, _ = read_bin(str(out / 'mine.bin'))
    people = [person_of(decode_image(b)) for b in images]
    assert set(people) == set(held)
    for i, same in enumerate(issame):
        assert (people[2 * i] == people[2 * i + 1]) == same
        if same:
            assert images[2 * i] != images[2 * i + 1]

    again = prepare.prepare_dataset(lfw, tmp_path / 'again', image_size=SIZE, holdout=2,
                                    val_name='mine', num_pairs=6, min_images=2, seed=4,
                                    progress=False)
    assert again['holdout'] == held
    assert read_bin(str(tmp_path / 'again' / 'mine.bin'))[0] == images  # deterministic


def test_sample_pairs_deterministic_distinct_and_balanced():
    small = {'a': 3, 'b': ['x', 'y'], 'c': 1, 'd': 0}
    pairs = prepare.sample_pairs(small, 8, seed=1)
    assert pairs == prepare.sample_pairs(small, 8, seed=1)
    assert [p[2] for p in pairs] == [True, False] * 4
    assert len({(a, b) for a, b, _ in pairs}) == 8
    sizes = {'a': 3, 'b': 2, 'c': 1}
    for (ida, ia), (idb, ib), same in pairs:
        assert (ida == idb) == same and ia < sizes[ida] and ib < sizes[idb]
        assert (ida, ia) != (idb, ib)
    assert len(prepare.sample_pairs(small, None, 0)) == 8  # 4 same pairs exist: 4 + 4
    with pytest.raises(ValueError, match='only 4 distinct'):
        prepare.sample_pairs(small, 10, 0)
    with pytest.raises(ValueError):
        prepare.sample_pairs({'a': 1, 'b': 1}, None, 0)
    big = {k: 1000 for k in range(5)}  # too many pairs to enumerate: rejection sampling
    pairs = prepare.sample_pairs(big, 301, seed=0)
    assert sum(p[2] for p in pairs) == 150 and len({(a, b) for a, b, _ in pairs}) == 301
    assert pairs != prepare.sample_pairs(big, 301, seed=1)


# ----------------------------------------------------------------------------- never half-written

def test_failure_leaves_no_output_and_user_files_survive(lfw, tmp_path):
    bad = lfw / 'Carl_Wu' / 'Carl_Wu_0002.jpg'
    bad.write_bytes(b'not a jpeg at all')
    out = tmp_path / 'data'
    with pytest.raises(FaceDataError, match='Carl_Wu_0002.jpg.*does not decode'):
        prepare.prepare_dataset(lfw, out, image_size=SIZE, progress=False)
    assert sorted(os.listdir(tmp_path)) == ['photos']  # neither out nor a staging folder

    summary = prepare.prepare_dataset(lfw, out, image_size=SIZE, skip_bad=True, progress=False)
    assert summary['images'] == 14 and summary['skipped'][0][0] == str(bad)
    assert 'skipped 1 bad photos' in prepare.format_summary(summary)

    user = tmp_path / 'mine'
    user.mkdir()
    (user / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not empty'):
        prepare.prepare_dataset(lfw, user, image_size=SIZE, skip_bad=True, progress=False)
    assert os.listdir(user) == ['notes.txt']
    summary = prepare.prepare_dataset(lfw, user, image_size=SIZE, skip_bad=True,
                                      overwrite=True, progress=False)
    assert (user / 'property').exists()
    assert open(os.path.join(summary['moved_aside'], 'notes.txt')).read() == 'keep me'

    empty = tmp_path / 'empty'
    empty.mkdir()
    prepare.prepare_dataset(lfw, empty, image_size=SIZE, skip_bad=True, formats='rec',
                            progress=False)
    assert (empty / 'train.idx').exists()
    for src, dst in [(lfw, lfw / 'out'), (lfw, tmp_path)]:
        with pytest.raises(ValueError, match='overlap'):
            prepare.prepare_dataset(src, dst, progress=False)


# ----------------------------------------------------------------------------- pairs.txt

PAIRS_LINES = ['Ann_Smith\t1\t3', 'Ann_Smith\t2\tCarl_Wu\t4',
               'Eve_Park\t2\t3', 'Bob_Jones\t1\tFinn_Ode\t2']


@pytest.mark.parametrize('header', ['2\t1', '2'])
def test_bin_from_pairs(lfw, tmp_path, header):
    lines = PAIRS_LINES if header == '2\t1' else [PAIRS_LINES[i] for i in (0, 2, 1, 3)]
    pairs_txt = tmp_path / 'pairs.txt'
    pairs_txt.write_text('\n'.join([header] + lines) + '\n')
    out = tmp_path / 'lfw_small.bin'
    summary = prepare.bin_from_pairs(pairs_txt, lfw, out, image_size=SIZE, progress=False)
    assert (summary['pairs'], summary['same_pairs'], summary['images']) == (4, 2, 8)
    (data, _), issame = load_bin(str(out), SIZE)
    assert data.shape == (8, 3, 16, 16)
    assert list(issame) == [len(line.split('\t')) == 3 for line in lines]  # file order
    images, _ = read_bin(str(out))
    people = [person_of(decode_image(b)) for b in images]
    expected = []
    for line in lines:
        f = line.split('\t')
        expected += [f[0], f[0]] if len(f) == 3 else [f[0], f[2]]
    assert people == expected
    green = decode_image(images[1])[..., 1].mean()
    assert abs(green - colour(0, 3)[1]) < 4  # Ann_Smith photo 3


@pytest.mark.parametrize('content, line, message', [
    ('3\n' + '\n'.join(PAIRS_LINES), 1, 'announces 1 fold.*of 3 same'),
    ('x y z\n', 1, 'first line'),
    ('1\t1\nAnn_Smith\t1\nBob_Jones\t1\tFinn_Ode\t2\n', 2, 'got 2 field'),
    ('1\t1\nAnn_Smith\t1\tone\nBob_Jones\t1\tFinn_Ode\t2\n', 2, 'integer'),
    ('1\t1\nAnn_Smith\t1\t2\nBob_Jones\t1\tFinn_Ode\t9\n', 3, 'Finn_Ode_0009.jpg not found'),
])
def test_bad_pairs_lines(lfw, tmp_path, content, line, message):
    pairs_txt = tmp_path / 'pairs.txt'
    pairs_txt.write_text(content)
    out = tmp_path / 'x.bin'
    with pytest.raises(FaceDataError, match=message) as info:
        prepare.bin_from_pairs(pairs_txt, lfw, out, image_size=SIZE, progress=False)
    assert info.value.path == str(pairs_txt) and info.value.line == line
    assert not out.exists()


# ----------------------------------------------------------------------------- alignment

def similarity(angle_deg, scale, tx, ty):
    a = onp.deg2rad(angle_deg)
    return onp.array([[scale * onp.cos(a), -scale * onp.sin(a), tx],
                      [scale * onp.sin(a), scale * onp.cos(a), ty]])


def apply(matrix, pts):
    return pts @ matrix[:, :2].T + matrix[:, 2]


def test_estimate_similarity_recovers_transform_and_is_least_squares():
    known = similarity(25, 1.7, 30.5, -12.25)
    src = ARCFACE_TEMPLATE.astype(float)
    onp.testing.assert_allclose(estimate_similarity(src, apply(known, src)), known, atol=1e-9)
    # With noise it equals the linear least-squares fit of
    # x' = a x - b y + tx, y' = b x + a y + ty.
    rng = onp.random.RandomState(0)
    dst = apply(known, src) + rng.normal(0, 2, src.shape)
    rows = []
    for x, y in src:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    a, b, tx, ty = onp.linalg.lstsq(onp.array(rows), dst.ravel(), rcond=None)[0]
    onp.testing.assert_allclose(estimate_similarity(src, dst), [[a, -b, tx], [b, a, ty]],
                                atol=1e-9)
    with pytest.raises(ValueError, match='coincide'):
        estimate_similarity(onp.ones((5, 2)), src)
    with pytest.raises(ValueError, match='same shape'):
        estimate_similarity(src, src[:4])


def test_align_face_puts_landmarks_on_template():
    known = similarity(-18, 1.6, 40, 25)  # template -> positions in the photo
    points = apply(known, ARCFACE_TEMPLATE.astype(float))
    height, width = 240, 260
    yy, xx = onp.mgrid[0:height, 0:width].astype(float)
    img = onp.zeros((height, width, 3), onp.uint8)
    for c, (px, py) in enumerate(points):  # a Gaussian dot on each landmark
        blob = 250 * onp.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 2.0 ** 2))
        img[..., c % 3] = onp.maximum(img[..., c % 3], blob.astype(onp.uint8))
    onp.testing.assert_allclose(estimate_similarity(points, ARCFACE_TEMPLATE),
                                onp.linalg.inv(onp.vstack([known, [0, 0, 1]]))[:2], atol=1e-6)
    for size in [(112, 112), (112, 96)]:
        aligned = align_face(img, points, size)
        assert aligned.shape == size + (3,) and aligned.dtype == onp.uint8
        ref = reference_landmarks(size)
        for c, (tx, ty) in enumerate(ref):
            x0, y0 = int(round(tx)), int(round(ty))
            win = aligned[y0 - 5:y0 + 6, x0 - 5:x0 + 6, c % 3].astype(float)
            wy, wx = onp.mgrid[y0 - 5:y0 + 6, x0 - 5:x0 + 6]
            centre = (wx * win).sum() / win.sum(), (wy * win).sum() / win.sum()
            assert onp.hypot(centre[0] - tx, centre[1] - ty) < 0.5
    onp.testing.assert_allclose(reference_landmarks((112, 96)),
                                ARCFACE_TEMPLATE - [8, 0], atol=1e-5)
    onp.testing.assert_allclose(reference_landmarks((224, 224)), ARCFACE_TEMPLATE * 2, atol=1e-4)
    assert align_face(img, points, (112, 112))[0, 0].tolist() == [0, 0, 0]  # border value 0


def test_landmark_validation():
    with pytest.raises(ValueError, match=r'shape \(5, 2\).*ambiguous'):
        check_landmarks(onp.zeros(10))
    with pytest.raises(ValueError, match=r'got shape \(4, 2\)'):
        align_face(onp.zeros((20, 20, 3), onp.uint8), onp.zeros((4, 2)))
    with pytest.raises(ValueError, match='NaN'):
        check_landmarks(onp.full((5, 2), onp.nan))


def write_landmarks(path, names=NAMES, counts=COUNTS, size=(20, 24)):
    """Landmarks placing the template in the middle of each photo (scaled to fit)."""
    pts = reference_landmarks(size).reshape(-1)
    lines = ['# path, 5 points', '']
    for name, n in zip(names, counts):
        for i in range(1, n + 1):
            values = ' '.join('%.3f' % v for v in pts)
            lines.append('%s/%s_%04d.jpg %s  # ok' % (name, name, i, values))
    lines[3] = lines[3].replace(' ', ',')  # commas work too
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_landmarks_file_alignment_and_errors(lfw, tmp_path):
    marks = write_landmarks(tmp_path / 'marks.txt')
    parsed = prepare.read_landmarks(marks)
    assert len(parsed) == 15 and parsed['Ann_Smith/Ann_Smith_0001.jpg'].shape == (5, 2)
    summary = prepare.prepare_dataset(lfw, tmp_path / 'data', image_size=SIZE, landmarks=marks,
                                      formats='folders', progress=False)
    assert (summary['aligned'], summary['resized']) == (15, 0)
    assert 'aligned 15 images' in prepare.format_summary(summary)

    bad = tmp_path / 'bad.txt'
    text = marks.read_text().splitlines()
    text[4] = 'Ann_Smith/Ann_Smith_0002.jpg 1 2 3 4 5 6 7 8 nine 10'
    bad.write_text('\n'.join(text))
    with pytest.raises(FaceDataError, match='not a number') as info:
        prepare.read_landmarks(bad)
    assert (info.value.path, info.value.line) == (str(bad), 5)
    text[4] = 'Ann_Smith/Ann_Smith_0002.jpg 1 2 3'
    bad.write_text('\n'.join(text))
    with pytest.raises(FaceDataError, match='got 4 field') as info:
        prepare.prepare_dataset(lfw, tmp_path / 'x', landmarks=bad, progress=False)
    assert info.value.line == 5 and not (tmp_path / 'x').exists()

    short = tmp_path / 'short.txt'
    short.write_text('\n'.join(marks.read_text().splitlines()[:4]))
    with pytest.raises(FaceDataError, match='no landmarks for Ann_Smith/Ann_Smith_0003.jpg'):
        prepare.prepare_dataset(lfw, tmp_path / 'y', landmarks=short, progress=False)
    assert not (tmp_path / 'y').exists()


# ----------------------------------------------------------------------------- the script

def test_script_subcommands_and_check(lfw, tmp_path, capsys):
    script = load_script()
    out = tmp_path / 'data'
    assert script.main(['folders', str(lfw), str(out), '--image-size', '16', '16',
                        '--holdout', '2', '--num-pairs', '4', '--no-progress']) == 0
    assert 'held out 2 identities' in capsys.readouterr().out
    assert script.main(['check', str(out), '--no-progress']) == 0
    report = capsys.readouterr().out
    assert 'OK' in report and 'val.bin: 4 pairs' in report and 'train.rec: ' in report

    pairs_txt = tmp_path / 'pairs.txt'
    pairs_txt.write_text('2\t1\n' + '\n'.join(PAIRS_LINES) + '\n')
    assert script.main(['pairs', str(pairs_txt), str(lfw), str(out / 'lfw.bin'),
                        '--image-size', '16', '16', '--no-progress']) == 0
    assert script.main(['check', str(out), '--no-progress']) == 0
    assert 'lfw.bin: 4 pairs' in capsys.readouterr().out
    assert script.main(['pairs', str(pairs_txt), str(lfw), str(out / 'lfw.bin'),
                        '--no-progress']) == 1  # never replaced without --overwrite
    assert 'already exists' in capsys.readouterr().err

    # An .idx line pointing at another record -> check fails; `index` repairs it.
    idx = out / 'train.idx'
    good_idx = idx.read_text()
    lines = good_idx.splitlines()
    lines[3] = '3\t' + lines[4].split('\t')[1]
    idx.write_text('\n'.join(lines) + '\n')
    capsys.readouterr()
    assert script.main(['check', str(out), '--no-progress']) == 1
    assert 'both point at byte' in capsys.readouterr().out
    assert script.main(['index', str(out / 'train.rec')]) == 0
    assert idx.read_text() == good_idx
    kept = [f for f in os.listdir(out) if f.startswith('train.idx.old-')]
    assert len(kept) == 1 and 'kept it as' in capsys.readouterr().out
    os.remove(out / kept[0])
    assert check.rebuild_index(str(out / 'train.rec')) == (str(idx), 15, None)
    assert script.main(['check', str(out), '--no-progress']) == 0

    # A flipped byte in an image of the .rec (the JPEG start marker) -> check fails.
    rec = out / 'train.rec'
    data = bytearray(rec.read_bytes())
    offset = int(lines[5].split('\t')[1])
    image_at = offset + 8 + 24  # record header, image header (scalar label, flag 0)
    assert data[image_at:image_at + 2] == b'\xff\xd8'
    data[image_at] ^= 0xFF
    rec.write_bytes(bytes(data))
    capsys.readouterr()
    assert script.main(['check', str(out), '--no-progress']) == 1
    assert 'record 5: image does not decode' in capsys.readouterr().out

    # Bad property and a broken .bin are reported too.
    (out / 'property').write_text('three,16,16\n')
    assert script.main(['check', str(out), '--no-progress']) == 1
    assert 'line 1' in capsys.readouterr().out


def test_script_errors_and_help(lfw, tmp_path, capsys):
    script = load_script()
    with pytest.raises(SystemExit) as info:
        script.main(['--help'])
    assert info.value.code == 0
    assert 'folders' in capsys.readouterr().out
    assert script.main(['index', str(tmp_path / 'missing.rec')]) == 1
    assert 'RecordIO file not found' in capsys.readouterr().err
    (lfw / 'Bob_Jones' / 'Bob_Jones_0001.jpg').write_bytes(b'')
    assert script.main(['folders', str(lfw), str(tmp_path / 'd'), '--no-progress']) == 1
    assert 'Bob_Jones_0001.jpg' in capsys.readouterr().err and not (tmp_path / 'd').exists()
    assert script.main(['folders', str(lfw), str(tmp_path / 'd'), '--skip-bad',
                        '--formats', 'rec', '--image-size', '16', '16', '--no-progress']) == 0
    assert script.main(['check', str(tmp_path / 'd'), '--no-progress']) == 0
    bin_path = tmp_path / 'd' / 'val.bin'
    bin_path.write_bytes(pickle.dumps(([b'x', b'y'], [True])))
    assert script.main(['check', str(tmp_path / 'd'), '--no-progress']) == 1
    assert 'val.bin' in capsys.readouterr().out
