"""Faces in ordinary photos: detection, the five landmarks, alignment, prepare_data.py --detect,
compare.py and FaceEmbedder.compare on photos.

The photos are skimage's astronaut (Eileen Collins) pasted at known positions, sizes and small
rotations into backgrounds (gluon_arcface.data.pasted_faces), so that where her landmarks lie in
each frame is known; small frames keep each test to a few seconds of one core.
"""
import importlib.util
import os

import cv2
import numpy as onp
import pytest

pytest.importorskip('dlib')

import gluon_arcface as gaf  # noqa: E402
from gluon_arcface import detect, pasted_faces as pf, prepare  # noqa: E402
from gluon_arcface.data.align import ARCFACE_TEMPLATE  # noqa: E402

SCRIPTS = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts')


def load_script(name):
    spec = importlib.util.spec_from_file_location(name + '_script',
                                                  os.path.join(SCRIPTS, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def astronaut():
    return pf.astronaut_source()


def frame_with(sources_widths, size=(240, 320), kind='gradient', seed=0, angle=0.0):
    """A frame of ``size`` with each (source, face width, centre) pasted -> (frame, truths)."""
    rng = onp.random.RandomState(seed)
    img = pf.background(kind, size, rng)
    truths = [pf.paste(src, img, width, angle, centre) for src, width, centre in sources_widths]
    return img, truths


def write(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


# ----------------------------------------------------------------------------- detection

def test_pasted_faces_are_found_and_aligned(astronaut):
    """Every pasted face (70-160 px wide, +-10 degrees, greyscale or colour, noise, gradients
    and photos behind) is found, and its alignment is within a pixel of the one the true
    landmarks give."""
    frames = pf.make_frames([astronaut], 10, seed=3, frame_sizes=((180, 240), (300, 400)),
                            widths=(70, 160), grey=0.3)
    assert any(f.grey for f in frames) and len({f.background for f in frames}) >= 4
    result = pf.evaluate(frames, 'hog')
    assert result['rate'] == 1.0, result['reasons']
    assert result['mean_error'] < 1.0 and result['max_error'] < 2.0, result['errors']


def test_landmark_error_measures_the_alignment():
    truth = ARCFACE_TEMPLATE * 2 + 30
    assert pf.landmark_error(truth, truth) == pytest.approx(0, abs=1e-9)
    # Every found point 4 px right of the truth at scale 2: the crop is 2 px off.
    assert pf.landmark_error(truth, truth + [4, 0]) == pytest.approx(2.0, abs=1e-4)


def test_no_face_and_tiny_or_odd_images_do_not_crash():
    rng = onp.random.RandomState(0)
    empty = pf.background('brick', (200, 260), rng)
    with pytest.raises(detect.NoFaceError, match='empty.jpg: no face found'):
        detect.find_face(empty, 'hog', path='empty.jpg')
    for img in (onp.zeros((1, 1, 3), onp.uint8), onp.zeros((8, 8, 3), onp.uint8),
                onp.zeros((20, 30), onp.uint8), onp.zeros((20, 20, 4), onp.uint8)):
        assert detect.detect_faces(img, 'cnn', 0) == []
        assert detect.detect_faces(img, 'hog', 1) == []
    with pytest.raises(ValueError, match='uint8'):
        detect.detect_faces(onp.zeros((50, 50, 3), onp.float32))


def test_greyscale_and_rgba_photos(astronaut):
    img, (truth,) = frame_with([(astronaut, 110, (160, 120))])
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    rgba = onp.dstack([img, onp.full(img.shape[:2], 255, onp.uint8)])
    for photo in (grey, grey[:, :, None], rgba):
        face = detect.find_face(photo, 'hog')
        assert pf.landmark_error(truth, face.landmarks) < 1.5


def test_large_photos_are_searched_downscaled_with_full_size_landmarks(astronaut, monkeypatch):
    img, (truth,) = frame_with([(astronaut, 240, (300, 260))], size=(560, 620))
    monkeypatch.setattr(detect, 'HOG_MAX_SIDE', 300)  # searched at about half size
    face = detect.find_face(img, 'hog')
    assert pf.landmark_error(truth, face.landmarks) < 1.0
    x0, y0, x1, y1 = face.box
    assert x0 < truth[2][0] < x1 and y0 < truth[2][1] < y1


def test_several_faces_policy(astronaut):
    similar, _ = frame_with([(astronaut, 100, (90, 120)), (astronaut, 90, (250, 120))])
    with pytest.raises(detect.NoFaceError, match='2 faces of similar size'):
        detect.find_face(similar, 'hog', 'largest')
    # A much smaller second face: the largest is kept, unless the policy is 'skip'.
    img, (big, small) = frame_with([(astronaut, 130, (110, 125)), (astronaut, 70, (265, 110))])
    assert len(detect.detect_faces(img, 'hog', 1)) == 2
    face = detect.find_face(img, 'hog', 'largest')
    assert pf.landmark_error(big, face.landmarks) < 1.0
    with pytest.raises(detect.NoFaceError, match='2 faces .*skip'):
        detect.find_face(img, 'hog', 'skip')


def test_pick_face_ignores_weak_detections():
    lm = onp.zeros((5, 2), onp.float32)
    face = detect.Face((0, 0, 100, 100), lm, 1.2)
    weak = detect.Face((200, 0, 300, 100), lm, 0.1)  # HOG's texture hit beside a real face
    assert detect.pick_face([face, weak]) == (face, None)
    assert detect.pick_face([face, weak], 'skip') == (face, None)
    assert detect.pick_face([]) == (None, 'no face found')
    with pytest.raises(ValueError, match='policy'):
        detect.pick_face([face], 'first')


def test_align_puts_the_landmarks_on_the_template(astronaut):
    img, (truth,) = frame_with([(astronaut, 120, (150, 125))], angle=8.0)
    face = detect.find_face(img)
    crop = gaf.align_photo(img, face)
    assert crop.shape == (112, 112, 3) and crop.dtype == onp.uint8
    onp.testing.assert_array_equal(crop, detect.align_photo(img, face.landmarks))
    # The crop's own landmarks land within a few pixels of the template (the astronaut's face
    # is 5 px from it on average: a face is not the template).
    found = detect.crop_landmarks(crop)
    assert onp.abs(found - ARCFACE_TEMPLATE).mean() < 6
    assert gaf.align_photo(img, face, (64, 64)).shape == (64, 64, 3)
    assert detect.align_photo(img, face, template='dlib-chip').shape == (150, 150, 3)
    with pytest.raises(ValueError, match='needs a Face'):
        detect.align_photo(img, face.landmarks, template='dlib-chip')


# ----------------------------------------------------------------------------- prepare --detect

@pytest.fixture
def photo_tree(tmp_path, astronaut):
    """Ann: a colour photo, a greyscale PNG, a photo without a face, one with two faces of
    similar size, a CMYK JPEG; Bob: an RGBA PNG, a photo with a small second face, a file that
    is no image, a 16-bit PNG."""
    src = tmp_path / 'photos'
    (src / 'Ann').mkdir(parents=True)
    (src / 'Bob').mkdir()
    img, _ = frame_with([(astronaut, 110, (150, 120))], seed=1, kind='coffee')
    write(src / 'Ann' / 'a1.jpg', img)
    img, _ = frame_with([(astronaut, 90, (200, 130))], seed=2, kind='noise')
    assert cv2.imwrite(str(src / 'Ann' / 'a2.png'), cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    write(src / 'Ann' / 'a3.jpg', pf.background('grass', (200, 260), onp.random.RandomState(0)))
    img, _ = frame_with([(astronaut, 100, (90, 120)), (astronaut, 90, (250, 120))])
    write(src / 'Ann' / 'a4.jpg', img)
    img, _ = frame_with([(astronaut, 100, (140, 110))], seed=5, kind='chelsea')
    PIL = pytest.importorskip('PIL.Image')
    PIL.fromarray(img).convert('CMYK').save(str(src / 'Ann' / 'a5.jpg'))
    img, _ = frame_with([(astronaut, 120, (160, 120))], seed=4, kind='rocket')
    assert cv2.imwrite(str(src / 'Bob' / 'b1.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGRA))
    img, _ = frame_with([(astronaut, 130, (110, 125)), (astronaut, 70, (265, 110))])
    write(src / 'Bob' / 'b2.jpg', img)
    (src / 'Bob' / 'b3.jpg').write_bytes(b'not a photo')
    img, _ = frame_with([(astronaut, 100, (170, 120))], seed=6, kind='grass')
    assert cv2.imwrite(str(src / 'Bob' / 'b4.png'),
                       cv2.cvtColor(img, cv2.COLOR_RGB2BGR).astype(onp.uint16) * 257)
    return src


def test_prepare_detect_end_to_end(photo_tree, tmp_path, capsys):
    out = tmp_path / 'data'
    status = load_script('prepare_data').main(
        ['folders', str(photo_tree), str(out), '--detect', 'hog', '--no-progress'])
    printed = capsys.readouterr().out
    assert status == 0
    rows = (out / 'skipped.tsv').read_text().splitlines()
    assert rows[0] == 'path\treason'
    skipped = dict(r.split('\t') for r in rows[1:])
    assert sorted(os.path.relpath(p, photo_tree) for p in skipped) == [
        'Ann/a3.jpg', 'Ann/a4.jpg', 'Bob/b3.jpg']
    by_name = {os.path.basename(p): r for p, r in skipped.items()}
    assert by_name['a3.jpg'] == 'no face found'
    assert 'faces of similar size' in by_name['a4.jpg']
    assert 'does not decode' in by_name['b3.jpg']
    assert 'skipped 3 photos (no face: 1, not an image: 1, several faces of similar size: 1)' \
        in printed
    assert 'detected (hog) and aligned 6 faces' in printed
    # Every kept photo is an aligned face: its own landmarks sit on the template.
    ds = gaf.FaceFolderDataset(str(out))
    assert len(ds) == 6 and sorted(ds[i][1] for i in range(6)) == [0, 0, 0, 1, 1, 1]
    for i in range(6):
        crop = ds[i][0].asnumpy()
        assert crop.shape == (112, 112, 3)
        assert onp.abs(detect.crop_landmarks(crop) - ARCFACE_TEMPLATE).mean() < 6
    # --detect-policy skip also skips the photo with a small second face.
    summary = prepare.prepare_dataset(photo_tree, tmp_path / 'one', detect='hog',
                                      detect_policy='skip', progress=False)
    assert summary['images'] == 5 and len(summary['skipped']) == 4
    assert any('--detect-policy skip' in r for _, r in summary['skipped'])


def test_detect_in_worker_processes_gives_the_same_dataset(photo_tree, tmp_path):
    one = prepare.prepare_dataset(photo_tree, tmp_path / 'one', detect='hog', workers=1,
                                  progress=False)
    two = prepare.prepare_dataset(photo_tree, tmp_path / 'two', detect='hog', workers=2,
                                  progress=False)
    for key in ('images', 'aligned', 'skipped', 'identities'):
        assert one[key] == two[key], key
    assert one['aligned'] == 6
    for name in ('train.rec', 'train.idx', 'skipped.tsv', 'identities.tsv', 'property'):
        assert (tmp_path / 'one' / name).read_bytes() == (tmp_path / 'two' / name).read_bytes()
    assert prepare.encoding_workers(None, 10) == 1
    assert 1 <= prepare.encoding_workers(None, 1000) <= 8
    with pytest.raises(ValueError, match='workers'):
        prepare.encoding_workers(0)


def test_ordinary_portraits_in_many_versions_all_give_an_aligned_face(tmp_path):
    """Two real uncropped portraits (head, shoulders, background), each in the versions a photo
    folder has: colour and greyscale, large and small, mirrored, turned, recompressed, framed
    by more background. Every one gives an aligned face; nothing is skipped."""
    import matplotlib.cbook
    import skimage.data
    hopper = cv2.cvtColor(cv2.imread(str(matplotlib.cbook.get_sample_data(
        'grace_hopper.jpg', asfileobj=False))), cv2.COLOR_BGR2RGB)
    src = tmp_path / 'photos'
    for name, photo in (('Collins', skimage.data.astronaut()), ('Hopper', hopper)):
        h, w = photo.shape[:2]
        versions = {
            'colour': photo,
            'grey': onp.repeat(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[:, :, None], 3, 2),
            'small': cv2.resize(photo, (w // 4, h // 4), interpolation=cv2.INTER_AREA),
            'mirror': photo[:, ::-1],
            'turned': cv2.warpAffine(photo, cv2.getRotationMatrix2D((w / 2, h / 2), 9, 1.0),
                                     (w, h), borderMode=cv2.BORDER_REPLICATE),
            'framed': cv2.copyMakeBorder(photo, h // 2, h // 3, w // 2, w, cv2.BORDER_REPLICATE),
        }
        (src / name).mkdir(parents=True)
        for kind, img in versions.items():
            ok, buf = cv2.imencode('.jpg', cv2.cvtColor(onp.ascontiguousarray(img),
                                                        cv2.COLOR_RGB2BGR),
                                   [int(cv2.IMWRITE_JPEG_QUALITY), 40])
            (src / name / (kind + '.jpg')).write_bytes(buf.tobytes())
    summary = prepare.prepare_dataset(src, tmp_path / 'data', detect='auto', progress=False)
    assert summary['skipped'] == [] and summary['aligned'] == summary['images'] == 12
    ds = gaf.FaceFolderDataset(str(tmp_path / 'data'))
    for i in range(len(ds)):
        crop = ds[i][0].asnumpy()
        assert onp.abs(detect.crop_landmarks(crop) - ARCFACE_TEMPLATE).mean() < 6


def test_interrupted_detect_run_leaves_nothing(photo_tree, tmp_path, monkeypatch):
    calls = []
    real = detect.find_face

    def find_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(detect, 'find_face', find_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_dataset(photo_tree, tmp_path / 'out', detect='hog', progress=False)
    assert sorted(os.listdir(tmp_path)) == ['photos']


def test_detect_settings_are_checked(photo_tree, tmp_path):
    with pytest.raises(ValueError, match='detect must be one of'):
        prepare.prepare_dataset(photo_tree, tmp_path / 'x', detect='mtcnn', progress=False)
    with pytest.raises(ValueError, match='landmarks or detect'):
        prepare.prepare_dataset(photo_tree, tmp_path / 'x', detect='hog', landmarks={},
                                progress=False)


# ----------------------------------------------------------------------------- comparing photos

@pytest.fixture(scope='module')
def two_photos(tmp_path_factory, astronaut):
    """The astronaut photo as skimage ships it, and her face mirrored, smaller and turned on a
    coffee table; a photo of bricks without a face."""
    import skimage.data
    root = tmp_path_factory.mktemp('compare')
    a = write(root / 'a.jpg', skimage.data.astronaut())
    mirrored = astronaut._replace(
        image=onp.ascontiguousarray(astronaut.image[:, ::-1]),
        landmarks=onp.stack([[astronaut.image.shape[1] - 1 - x, y]
                             for x, y in astronaut.landmarks])[[1, 0, 2, 4, 3]])
    img, _ = frame_with([(mirrored, 110, (180, 130))], size=(260, 340), kind='coffee', angle=-6)
    b = write(root / 'b.png', img)
    none = write(root / 'bricks.jpg', pf.background('brick', (200, 260),
                                                    onp.random.RandomState(0)))
    return a, b, none


@pytest.fixture(scope='module')
def embedder():
    return gaf.FaceEmbedder.load('dlib-resnet-v1')


def test_compare_script(two_photos, capsys, tmp_path):
    a, b, none = two_photos
    compare = load_script('compare')
    assert compare.main([a, b, '--crops', str(tmp_path / 'crop')]) == 0
    out = capsys.readouterr().out
    assert 'same person' in out and 'cosine similarity' in out
    assert cv2.imread(str(tmp_path / 'crop_a.png')).shape == (112, 112, 3)
    assert compare.main([a, none]) == 1
    err = capsys.readouterr().err
    assert err.strip() == 'error: %s: no face found' % none
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('hello')
    assert compare.main([str(not_image), a]) == 1
    err = capsys.readouterr().err
    assert 'notes.jpg' in err and 'does not decode' in err and 'Traceback' not in err


def test_face_embedder_compares_photos(two_photos, embedder):
    a, b, none = two_photos
    assert embedder.threshold == gaf.inference.DEFAULT_THRESHOLDS['dlib-resnet-v1']
    sim, same = embedder.compare(a, b, photos=True)
    assert same and sim > embedder.threshold
    # photos=True is: detect, align, then compare the crops as aligned faces.
    _, crops, _ = gaf.inference.photo_faces([a, b])
    assert embedder.compare(*crops)[0] == pytest.approx(sim, abs=1e-5)
    emb = gaf.embed_photos([a, b], embedder.net, image_size=embedder.image_size)
    assert emb.shape == (2, 128)
    assert float(emb[0] @ emb[1]) == pytest.approx(sim, abs=1e-5)
    with pytest.raises(detect.NoFaceError, match='bricks.jpg: no face found'):
        embedder.compare(a, none, photos=True)
    result = gaf.compare_photos(a, b, embedder.net, 0.5, image_size=embedder.image_size)
    assert [c.shape for c in result.crops] == [(112, 112, 3)] * 2 and result.same
