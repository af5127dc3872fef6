"""A dataset made by another tool, aligned the way this package aligns: ``prepare_data.py
realign SRC OUT``.

Face crops from other tools are framed in other ways (MTCNN's similarity to its own template,
centre crops of portraits, loose detector boxes), while the package's datasets, its networks'
framings (``dlib-resnet-v1``'s in-graph map onto dlib's chip) and its photo pipeline use
ArcFace's five-point template at 112x112. :func:`realign_dataset` re-aligns every crop of a
dataset folder (``train.rec`` or identity folders) and of each of its ``.bin`` verification sets
from the crop's own landmarks (dlib's 68 points on the crop, as ``verify.py --align
landmarks`` finds them) to that template, and writes a new dataset folder: the same identities
in the same order, every image once, the ``.bin`` pairs in order. A crop where dlib's detector
finds no face is aligned from the 68 points placed in a fixed box around it (as ``--align
landmarks`` does) and listed in ``realigned.tsv``. SRC is only read; OUT appears complete or
not at all.
"""
import os
import shutil

import numpy as np

from ..runtime.errors import FaceDataError
from ..runtime.fileio import write_text

__all__ = ['realign_crop', 'realign_dataset', 'NO_FACE']

NO_FACE = 'no face detected: aligned from landmarks in the fixed crop box'


def realign_crop(img, image_size=(112, 112)):
    """An RGB face crop re-aligned from its landmarks to ArcFace's template -> ``(crop,
    found)``. ``found`` is False when dlib's detector finds no face in the crop: its 68 points
    are then placed in a fixed box around the crop (``detect.CROP_BOX``), as ``verify.py
    --align landmarks`` does (extreme lighting, tight crops)."""
    from .align import align_face
    from .detect import crop_face
    found, landmarks = crop_face(img)
    return align_face(img, landmarks, tuple(image_size)), found


def _encode(img, quality):
    import cv2
    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(img[:, :, ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError('could not encode an image')
    return buf.tobytes()


def realign_dataset(src_dir, out_dir, image_size=(112, 112), jpeg_quality=95, progress=True):
    """Re-align ``src_dir``'s images and ``.bin`` sets into a new dataset ``out_dir`` (module
    notes) -> dict: ``images``, ``identities``, ``bins`` {name: pairs}, ``kept`` (crops where
    no face was detected, listed in ``realigned.tsv``)."""
    from .binfile import read_bin, write_bin
    from .datasets import open_face_dataset, write_property
    from .images import decode_image
    from .prepare import _StagingDir, _bar
    from .recordio import FaceRecWriter
    src_dir = os.fspath(src_dir)
    if os.path.abspath(src_dir) == os.path.abspath(os.fspath(out_dir)):
        raise FaceDataError(out_dir, 'the realigned dataset must be a new folder, not SRC')
    if os.path.isfile(os.path.join(src_dir, 'realigned.tsv')):
        raise FaceDataError(src_dir, 'already re-aligned by prepare_data.py realign (it holds '
                            'realigned.tsv); re-aligning again moves the crops whose face '
                            'dlib does not detect')
    dataset = open_face_dataset(src_dir)
    kept, counts = [], {}
    bins = sorted(f for f in os.listdir(src_dir) if f.endswith('.bin'))
    with _StagingDir(out_dir) as stage:
        items = []
        bar = _bar(len(dataset), 'realign images', progress)
        for i in range(len(dataset)):
            img, label = dataset[i]
            crop, found = realign_crop(img.asnumpy(), image_size)
            if not found:
                kept.append(('train#%d' % i, NO_FACE))
            items.append((int(label), i, _encode(crop, jpeg_quality)))
            counts[int(label)] = counts.get(int(label), 0) + 1
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        writer = FaceRecWriter(os.path.join(stage.path, 'train.rec'))
        for label, _, data in sorted(items, key=lambda t: (t[0], t[1])):  # class order, stable
            writer.add(label, data)
        writer.close()
        num_classes = dataset.num_classes or (max(counts) + 1 if counts else 0)
        write_property(stage.path, num_classes, image_size, len(items))
        for name in ('identities.tsv',):
            if os.path.isfile(os.path.join(src_dir, name)):
                shutil.copyfile(os.path.join(src_dir, name), os.path.join(stage.path, name))
        pairs = {}
        for name in bins:
            path = os.path.join(src_dir, name)
            images, issame = read_bin(path)
            bar = _bar(len(images), 'realign %s' % name, progress)
            out = []
            for k, buf in enumerate(images):
                crop, found = realign_crop(decode_image(buf, path, record=k), image_size)
                if not found:
                    kept.append(('%s#%d' % (name, k), NO_FACE))
                out.append(_encode(crop, jpeg_quality))
                if bar:
                    bar.update(1)
            if bar:
                bar.close()
            write_bin(os.path.join(stage.path, name), out, issame)
            pairs[name[:-4]] = len(issame)
        write_text(os.path.join(stage.path, 'realigned.tsv'), 'image\treason\n' + ''.join(
            '%s\t%s\n' % row for row in kept))
        stage.commit()
    return dict(images=len(items), identities=len(counts), bins=pairs, kept=kept)
