"""Checks made from a dataset: a 1:N identification check (known people, probes and their
truth), and a variant of a dataset whose crops look like faces from elsewhere.

:func:`write_identification_check` splits a dataset folder's people (train.rec or identity
folders; names from ``identities.tsv``) into *known* ones, whose first photos are enrolled
(``known/<name>/<n>.png``) and whose other photos are mated probes, and *strangers*, whose
photos are non-mated probes. Probes are ``probes/<NNNNN>.png`` in a seeded random order (the
file name says nothing of the person) and ``truth.json`` maps each to its person or
``unknown``: what ``scripts/identify.py --known OUT/known --crops --truth OUT/truth.json
OUT/probes`` reads.

``variant`` makes the crops look like faces from elsewhere (seeded, per image):

* ``'degraded'``: scaled down to 28-100 % of its side and back, rotated by up to 12 degrees,
  shifted by up to 6 pixels, JPEG quality 30-90: low resolution, misalignment and compression;
* ``'recropped'``: cropped again with the face shifted by up to 8 % of the side and scaled by
  0.85-1.2 (crops made by another tool, framed differently).
"""
import os

import numpy as np

from ..runtime.errors import FaceDataError
from .datasets import dataset_people
from ..runtime.fileio import atomic_write, write_json

__all__ = ['write_identification_check', 'write_dataset_variant', 'VARIANTS', 'degrade',
           'recrop']

VARIANTS = ('none', 'degraded', 'recropped')


def degrade(img, rng):
    """An RGB uint8 crop degraded as the ``'degraded'`` variant (module notes)."""
    import cv2
    h, w = img.shape[:2]
    s = rng.uniform(0.28, 1.0)
    small = cv2.resize(img, (max(8, int(w * s)), max(8, int(h * s))), interpolation=cv2.INTER_AREA)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-12, 12), 1.0)
    m[:, 2] += rng.uniform(-6, 6, size=2)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    ok, buf = cv2.imencode('.jpg', img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY,
                                                     int(rng.randint(30, 91))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def recrop(img, rng):
    """An RGB uint8 crop framed again as the ``'recropped'`` variant (module notes)."""
    import cv2
    h, w = img.shape[:2]
    scale = rng.uniform(0.85, 1.2)
    dx, dy = rng.uniform(-0.08, 0.08, size=2) * (w, h)
    m = np.array([[scale, 0, (1 - scale) * w / 2 + dx], [0, scale, (1 - scale) * h / 2 + dy]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _write_png(path, img):
    import cv2
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise OSError('%s: could not encode' % path)
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(buf.tobytes())


def write_identification_check(data_dir, out_dir, known=None, gallery_per_person=4,
                               probes_per_person=4, stranger_probes=None, variant='none',
                               seed=0):
    """Write a 1:N check from ``data_dir``'s people to ``out_dir`` (module notes) -> dict of
    counts. ``known``: how many people are enrolled (default: two thirds), the rest are
    strangers; ``gallery_per_person`` / ``probes_per_person``: photos of each known person
    enrolled / probed; ``stranger_probes``: photos probed per stranger (default:
    ``probes_per_person``). People with fewer than gallery + probe photos are left out.
    ``out_dir`` must not exist yet (nothing is overwritten)."""
    if variant not in VARIANTS:
        raise ValueError('variant must be one of %s, got %r' % (VARIANTS, variant))
    if os.path.exists(out_dir):
        raise FaceDataError(out_dir, 'already exists: give a new folder')
    people = [(n, imgs) for n, imgs in dataset_people(data_dir)
              if len(imgs) >= gallery_per_person + probes_per_person]
    if len(people) < 2:
        raise FaceDataError(data_dir, 'fewer than 2 people with %d photos or more'
                            % (gallery_per_person + probes_per_person))
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(people))
    n_known = int(round(len(people) * 2 / 3)) if known is None else int(known)
    if not 1 <= n_known < len(people):
        raise ValueError('known must be in [1, %d), got %d' % (len(people), n_known))
    change = {'none': None, 'degraded': degrade, 'recropped': recrop}[variant]
    stranger_probes = probes_per_person if stranger_probes is None else stranger_probes
    probes, truth = [], {}
    for rank, i in enumerate(order):
        name, images = people[i]
        pick = rng.permutation(len(images))
        if rank < n_known:
            folder = os.path.join(out_dir, 'known', name)
            os.makedirs(folder)
            for n, j in enumerate(pick[:gallery_per_person]):
                img = images[j][1]
                _write_png(os.path.join(folder, '%d.png' % n), change(img, rng) if change else img)
            chosen = pick[gallery_per_person:gallery_per_person + probes_per_person]
            probes += [(name, images[j][1]) for j in chosen]
        else:
            probes += [('unknown', images[j][1]) for j in pick[:stranger_probes]]
    os.makedirs(os.path.join(out_dir, 'probes'))
    for k, p in enumerate(rng.permutation(len(probes))):
        name, img = probes[p]
        fname = '%05d.png' % k
        _write_png(os.path.join(out_dir, 'probes', fname), change(img, rng) if change else img)
        truth[fname] = name
    write_json(os.path.join(out_dir, 'truth.json'), truth)
    mated = sum(1 for v in truth.values() if v != 'unknown')
    return dict(known=n_known, strangers=len(people) - n_known, gallery=n_known
                * gallery_per_person, mated_probes=mated, nonmated_probes=len(truth) - mated)


def write_dataset_variant(data_dir, out_dir, variant, seed=0, jpeg_quality=95):
    """A copy of a dataset folder (train.rec or identity folders, and every ``.bin``) with
    each image changed by ``variant`` ('degraded' or 'recropped', module notes; seeded per
    image, the same identities and pairs in order) -> ``out_dir``, which must not exist."""
    import cv2
    from .binfile import read_bin, write_bin
    from .datasets import open_face_dataset, write_property
    from .images import decode_image
    from .recordio import FaceRecWriter
    change = {'degraded': degrade, 'recropped': recrop}.get(variant)
    if change is None:
        raise ValueError("variant must be 'degraded' or 'recropped', got %r" % (variant,))
    if os.path.exists(out_dir):
        raise FaceDataError(out_dir, 'already exists: give a new folder')
    rng = np.random.RandomState(seed)

    def encode(img):
        return cv2.imencode('.jpg', np.ascontiguousarray(change(img, rng)[:, :, ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1].tobytes()
    dataset = open_face_dataset(data_dir)
    os.makedirs(out_dir)
    items = sorted(((int(dataset[i][1]), i) for i in range(len(dataset))))
    writer = FaceRecWriter(os.path.join(out_dir, 'train.rec'))
    for label, i in items:
        writer.add(label, encode(dataset[i][0].asnumpy()))
    writer.close()
    write_property(out_dir, dataset.num_classes, dataset.image_size, len(items))
    for name in sorted(f for f in os.listdir(data_dir) if f.endswith('.bin')):
        images, issame = read_bin(os.path.join(data_dir, name))
        write_bin(os.path.join(out_dir, name), [encode(decode_image(b)) for b in images], issame)
    return out_dir
