"""prepare_data.py realign: a dataset whose crops another tool framed, re-aligned to ArcFace's
template from each crop's landmarks, with its .bin pairs in order and SRC untouched. The faces
are three real portraits (skimage's astronaut and cameraman, matplotlib's Grace Hopper)."""
import hashlib
import os

import cv2
import numpy as onp
import pytest

pytest.importorskip('dlib')

import gluon_arcface as gaf  # noqa: E402
from gluon_arcface import detect  # noqa: E402
from gluon_arcface.data.align import ARCFACE_TEMPLATE  # noqa: E402

from test_detect import load_script, write  # noqa: E402
from test_identify import compose, portraits  # noqa: E402,F401 - the fixture


def loose_crop(img, face, scale, dx, dy):
    """A square crop around a face, framed loosely as another tool might (112x112)."""
    x0, y0, x1, y1 = face.box
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2 + dx * side, (y0 + y1) / 2 + dy * side
    m = onp.array([[112 / side, 0, 56 - cx * 112 / side], [0, 112 / side, 56 - cy * 112 / side]])
    return cv2.warpAffine(img, m, (112, 112), borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope='module')
def framed_elsewhere(tmp_path_factory, portraits):  # noqa: F811
    """A dataset of 3 people x 3 loose crops (one a noise image with no face) and a .bin."""
    root = tmp_path_factory.mktemp('elsewhere')
    src = root / 'photos'
    crops = {}
    for n, name in enumerate(('astronaut', 'cameraman', 'grace_hopper')):
        (src / name).mkdir(parents=True)
        for k in range(3):
            img = compose([(portraits[name], 120, (150, 150), 4.0 * (k - 1))], (300, 300),
                          'gradient', 10 * n + k)
            face = detect.find_face(img)
            crop = loose_crop(img, face, 1.6 + 0.2 * k, 0.05 * (k - 1), -0.04 * k)
            if name == 'cameraman' and k == 2:
                crop = pf_noise()
            crops[name, k] = crop
            write(src / name / ('%d.jpg' % k), crop)
    data = root / 'data'
    gaf.prepare_dataset(str(src), str(data), formats=('rec',), progress=False)
    pairs = [(('astronaut', 0), ('astronaut', 1), True), (('grace_hopper', 0),
                                                          ('grace_hopper', 2), True),
             (('astronaut', 2), ('grace_hopper', 1), False), (('cameraman', 0),
                                                               ('astronaut', 1), False)]
    images = [cv2.imencode('.jpg', cv2.cvtColor(crops[key], cv2.COLOR_RGB2BGR))[1].tobytes()
              for a, b, _ in pairs for key in (a, b)]
    gaf.write_bin(str(data / 'elsewhere_val.bin'), images, [s for _, _, s in pairs])
    return data


def pf_noise():
    from gluon_arcface import pasted_faces as pf
    return pf.background('noise', (112, 112), onp.random.RandomState(5))


def digest(folder):
    return {f: hashlib.sha1(open(os.path.join(folder, f), 'rb').read()).hexdigest()
            for f in sorted(os.listdir(folder))}


def test_realign_keeps_every_identity_image_and_pair(framed_elsewhere, tmp_path, capsys):
    before = digest(str(framed_elsewhere))
    out = tmp_path / 'realigned'
    status = load_script('prepare_data').main(['realign', str(framed_elsewhere), str(out),
                                               '--no-progress'])
    printed = capsys.readouterr().out
    assert status == 0
    assert '9 images of 3 identities' in printed and 'elsewhere_val.bin 4 pairs' in printed
    assert digest(str(framed_elsewhere)) == before  # SRC untouched
    src = gaf.open_face_dataset(str(framed_elsewhere))
    new = gaf.open_face_dataset(str(out))
    assert gaf.read_facerec_meta(str(out)) == ((112, 112), 3)
    assert [int(new[i][1]) for i in range(len(new))] == [int(src[i][1]) for i in range(len(src))]
    assert (out / 'identities.tsv').read_text() == (framed_elsewhere / 'identities.tsv').read_text()
    # The astronaut's and Grace Hopper's crops now have their landmarks on ArcFace's template
    # (HOG finds their faces in the crops; the cameraman's turned face it does not).
    after, before = {}, {}
    for i in range(len(new)):
        if int(new[i][1]) == 1:
            continue
        found, pts = detect.crop_face(new[i][0].asnumpy())
        after[i] = onp.abs(pts - ARCFACE_TEMPLATE).mean() if found else None
        found, pts = detect.crop_face(src[i][0].asnumpy())
        before[i] = onp.abs(pts - ARCFACE_TEMPLATE).mean() if found else None
    assert sum(v is not None for v in after.values()) >= 5
    assert max(v for v in after.values() if v is not None) < 5.0
    both = [i for i in after if after[i] is not None and before[i] is not None]
    assert both and onp.mean([after[i] for i in both]) < onp.mean([before[i] for i in both]) / 2
    rows = (out / 'realigned.tsv').read_text().splitlines()
    assert rows[0] == 'image\treason'
    listed = dict(r.split('\t') for r in rows[1:])
    assert 'train#5' in listed  # the noise image: no face, aligned from the fixed box
    assert set(listed.values()) == {gaf.realigning.NO_FACE}
    # .bin: the same pairs in the same order, each image re-aligned.
    (old_images, old_same), (new_images, new_same) = (
        gaf.read_bin(str(framed_elsewhere / 'elsewhere_val.bin')),
        gaf.read_bin(str(out / 'elsewhere_val.bin')))
    assert list(new_same) == list(old_same) and len(new_images) == len(old_images) == 8
    for k, buf in enumerate(new_images):
        img = gaf.decode_image(buf)
        assert img.shape == (112, 112, 3)
        found, pts = detect.crop_face(img)
        if found:
            assert onp.abs(pts - ARCFACE_TEMPLATE).mean() < 5.0, k
    # A realigned dataset is not realigned again.
    status = load_script('prepare_data').main(['realign', str(out), str(tmp_path / 'twice'),
                                               '--no-progress'])
    assert status == 1 and 'already re-aligned' in capsys.readouterr().err
    # OUT that exists and holds something is never overwritten.
    status = load_script('prepare_data').main(['realign', str(framed_elsewhere), str(out),
                                               '--no-progress'])
    assert status == 1 and 'realigned' in capsys.readouterr().err
