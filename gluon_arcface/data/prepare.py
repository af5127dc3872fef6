"""Turn a user's own face photos into the standard dataset layout.

* ``prepare_dataset``: one folder per person (any names, LFW style ``Name/Name_0001.jpg``) ->
  ``%08d`` identity folders and/or ``train.rec`` + ``train.idx`` (InsightFace layout), ``property``,
  ``identities.tsv`` and optionally a verification ``<val_name>.bin`` sampled from held-out people.
* ``bin_from_pairs``: a verification ``.bin`` from an LFW-style ``pairs.txt``.
* ``sample_pairs``: the deterministic same/different pair sampler.

Checking a dataset folder afterwards: :mod:`gluon_arcface.data.check`.

Images are decoded to RGB with OpenCV, aligned to the ArcFace template when landmarks are given
or faces are detected (``detect``: dlib, :mod:`gluon_arcface.data.detect`; else resized), and
stored as JPEG encoded from BGR with ``cv2.imencode``, as the field's tools do.
Outputs are built in a hidden sibling folder and renamed into place only when complete.
"""
import bisect
import collections
import contextlib
import os
import random
import re
import shutil
import sys
import uuid

import cv2
import numpy as np
from tqdm import tqdm

from .align import _image_size, align_face, check_landmarks
from .binfile import write_bin
from .images import decode_image, resize_face
from .datasets import IMAGE_EXTENSIONS, write_property
from ..runtime.errors import FaceDataError, ImageDecodeError
from ..runtime.fileio import write_text
from .recordio import FaceRecWriter

__all__ = ['prepare_dataset', 'bin_from_pairs', 'sample_pairs', 'read_landmarks', 'read_pairs',
           'scan_identities', 'format_summary', 'encoding_workers', 'FORMATS',
           'DEFAULT_MAX_PAIRS']

FORMATS = ('rec', 'folders')
#: Same (and as many different) pairs sampled at most when ``num_pairs`` is None (LFW has 3000).
DEFAULT_MAX_PAIRS = 3000
_NUM_LANDMARK_VALUES = 10
_COMMENT = re.compile(r'(^|[\s,])#.*$')


# ----------------------------------------------------------------------------- inputs

def _rel_key(path):
    """Canonical form of a relative image path: POSIX separators, no ``./``."""
    return os.path.normpath(path.replace('\\', '/')).replace(os.sep, '/')


def _read_lines(path, what, expected):
    """The lines of a UTF-8 text file, or a FaceDataError naming it."""
    try:
        with open(path, encoding='utf-8') as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise FaceDataError(path, '%s not found' % what) from None
    except UnicodeDecodeError:
        raise FaceDataError(path, 'expected ' + expected) from None


def read_landmarks(path):
    """Read a landmarks file -> dict ``relative/path`` -> float64 array (5, 2) of (x, y).

    One line per image: ``relative/path x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`` (left eye, right eye,
    nose, left and right mouth corners), separated by whitespace or commas; ``#`` starts a
    comment. Paths are relative to the image folder and may not contain spaces or commas.
    """
    path = os.fspath(path)
    lines = _read_lines(path, 'landmarks file',
                        'a UTF-8 text file of "relative/path x1 y1 ... x5 y5" lines')
    expected = ('expected "relative/path x1 y1 x2 y2 x3 y3 x4 y4 x5 y5" (a path and 10 numbers: '
                'left eye, right eye, nose, left and right mouth corners)')
    out = collections.OrderedDict()
    for lineno, raw in enumerate(lines, 1):
        line = _COMMENT.sub('', raw).strip()
        if not line:
            continue
        fields = [f for f in re.split(r'[\s,]+', line) if f]
        if len(fields) != 1 + _NUM_LANDMARK_VALUES:
            raise FaceDataError(path, '%s, got %d field(s): %r' % (expected, len(fields),
                                                                    raw[:100]), line=lineno)
        try:
            values = np.array([float(v) for v in fields[1:]], dtype=np.float64)
        except ValueError:
            raise FaceDataError(path, '%s; not a number in %r' % (expected, raw[:100]),
                                line=lineno) from None
        if not np.isfinite(values).all():
            raise FaceDataError(path, 'landmark coordinates must be finite numbers',
                                line=lineno)
        key = _rel_key(fields[0])
        if key in out:
            raise FaceDataError(path, 'landmarks for %s given twice' % key, line=lineno)
        out[key] = values.reshape(5, 2)
    return out


def _as_landmarks(landmarks):
    """``None``, a landmarks file, or a mapping rel path -> (5, 2) -> ``(dict, source name)``."""
    if landmarks is None:
        return None, None
    if isinstance(landmarks, (str, bytes, os.PathLike)):
        return read_landmarks(landmarks), os.fspath(landmarks)
    out = {}
    for key, pts in landmarks.items():
        out[_rel_key(str(key))] = check_landmarks(pts, 'landmarks of %s' % key)
    return out, '<landmarks>'


def _is_image(name):
    return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_identities(src_dir):
    """List ``src_dir``'s person folders -> list of ``(name, [image file names])``.

    Sorted by folder name (the order class ids are assigned in); images sorted by file name.
    Hidden entries, loose files and non-image files are ignored.
    """
    src_dir = os.fspath(src_dir)
    if not os.path.isdir(src_dir):
        raise FaceDataError(src_dir, 'source folder not found; expected one folder per person '
                            'holding that person\'s photos (e.g. Ann_Smith/Ann_Smith_0001.jpg)')
    identities = []
    for name in sorted(os.listdir(src_dir)):
        folder = os.path.join(src_dir, name)
        if name.startswith('.') or not os.path.isdir(folder):
            continue
        if '\t' in name or '\n' in name or '\r' in name:
            raise FaceDataError(folder, 'folder name contains a tab or line break; it could not '
                                'be written to identities.tsv')
        files = sorted(f for f in os.listdir(folder)
                       if _is_image(f) and os.path.isfile(os.path.join(folder, f)))
        identities.append((name, files))
    if not any(files for _, files in identities):
        raise FaceDataError(src_dir, 'no photos found; expected one folder per person holding '
                            'that person\'s photos (%s), e.g. Ann_Smith/Ann_Smith_0001.jpg'
                            % ', '.join(IMAGE_EXTENSIONS))
    return identities


PairLine = collections.namedtuple('PairLine', ['line', 'name_a', 'index_a', 'name_b', 'index_b',
                                               'issame'])
PairLine.__doc__ = 'One pair of an LFW-style pairs.txt (``line`` is 1-based).'


def read_pairs(pairs_txt):
    """Parse an LFW-style pairs.txt -> list of ``PairLine`` in file order.

    First line ``N`` or ``folds<TAB>N`` (N same and N different pairs per fold), then
    ``name<TAB>i<TAB>j`` (two photos of one person) or ``name1<TAB>i<TAB>name2<TAB>j``.
    """
    pairs_txt = os.fspath(pairs_txt)
    lines = _read_lines(pairs_txt, 'pairs file', 'a UTF-8 text file')
    numbered = [(i, line.split()) for i, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise FaceDataError(pairs_txt, 'empty file; expected a first line "N" or "folds<TAB>N"')
    head_line, head = numbered[0]
    try:
        if len(head) not in (1, 2):
            raise ValueError
        counts = [int(v) for v in head]
        if min(counts) <= 0:
            raise ValueError
    except ValueError:
        raise FaceDataError(pairs_txt, 'expected the first line to be "N" or "folds<TAB>N" '
                            '(positive integers), got %r' % lines[head_line - 1][:80],
                            line=head_line) from None
    folds, per_fold = (1, counts[0]) if len(counts) == 1 else counts
    pairs = []
    for lineno, fields in numbered[1:]:
        raw = lines[lineno - 1][:120]
        if len(fields) not in (3, 4):
            raise FaceDataError(pairs_txt, 'expected "name<TAB>i<TAB>j" (same person) or '
                                '"name1<TAB>i<TAB>name2<TAB>j" (different people), got %d '
                                'field(s): %r' % (len(fields), raw), line=lineno)
        if len(fields) == 3:
            name_a, ia, ib = fields
            name_b = name_a
        else:
            name_a, ia, name_b, ib = fields
        try:
            index_a, index_b = int(ia), int(ib)
            if index_a < 0 or index_b < 0:
                raise ValueError
        except ValueError:
            raise FaceDataError(pairs_txt, 'expected non-negative integer image numbers, got '
                                '%r' % raw, line=lineno) from None
        pairs.append(PairLine(lineno, name_a, index_a, name_b, index_b, len(fields) == 3))
    expected = 2 * folds * per_fold
    if len(pairs) != expected:
        raise FaceDataError(pairs_txt, 'first line announces %d fold(s) of %d same and %d '
                            'different pairs (%d lines), but the file has %d pair lines'
                            % (folds, per_fold, per_fold, expected, len(pairs)), line=head_line)
    return pairs


# ----------------------------------------------------------------------------- images

class _FaceEncoder:
    """Decode -> align or resize -> JPEG. Counts what it did."""

    def __init__(self, image_size, landmarks, landmarks_source, jpeg_quality, detect=None,
                 detect_policy='largest'):
        self.image_size = image_size
        self.detect, self.detect_policy = detect, detect_policy
        self.landmarks, self.landmarks_source = landmarks, landmarks_source
        self.jpeg_quality = int(jpeg_quality)
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError('jpeg_quality must be in [1, 100], got %r' % (jpeg_quality,))
        self.resized = self.aligned = 0
        self.used_landmarks = set()

    def encode(self, path, rel):
        """``(jpeg_bytes, how)`` for the image file ``path`` (``rel``: key in the landmarks);
        ``how`` is 'aligned', 'resized' or None (kept as it was). Pure: runs in worker processes.
        """
        pts = None
        if self.landmarks is not None:
            pts = self.landmarks.get(_rel_key(rel))
            if pts is None:
                raise FaceDataError(self.landmarks_source, 'no landmarks for %s (expected a line '
                                    '"%s x1 y1 ... x5 y5")' % (rel, _rel_key(rel)))
        with open(path, 'rb') as f:
            img = decode_image(f.read(), path)
        height, width = self.image_size
        how = None
        if self.detect is not None:
            from .detect import align_photo, find_face
            img = align_photo(img, find_face(img, self.detect, self.detect_policy, path),
                              self.image_size)
            how = 'aligned'
        elif pts is not None:
            img = align_face(img, pts, self.image_size)
            how = 'aligned'
        elif img.shape[:2] != (height, width):
            img = resize_face(img, (height, width))
            how = 'resized'
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [int(cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality])
        if not ok:
            raise FaceDataError(path, 'OpenCV could not encode the image as JPEG')
        return buf.tobytes(), how

    def count(self, how, rel):
        """Record what :meth:`encode` did to ``rel``."""
        if how == 'aligned':
            self.aligned += 1
            if self.landmarks is not None:
                self.used_landmarks.add(_rel_key(rel))
        elif how == 'resized':
            self.resized += 1

    def __call__(self, path, rel):
        """Encoded JPEG bytes of the image file ``path``, counted."""
        buf, how = self.encode(path, rel)
        self.count(how, rel)
        return buf


_worker_encoder = None


def _start_worker(encoder):
    global _worker_encoder
    _worker_encoder = encoder
    cv2.setNumThreads(1)  # one process per core already


def _encode_or_error(task, encoder=None):
    """``((bytes, how), None)`` or ``(None, FaceDataError)``: errors travel back in order.
    ``encoder``: the one to use (default: the worker process's)."""
    try:
        return (encoder or _worker_encoder).encode(*task), None
    except FaceDataError as e:
        return None, e


def encoding_workers(workers=None, num_photos=None):
    """Processes that decode/detect/encode photos: ``workers`` if given, else one per physical
    core (at most 8: each process holds its own detector models), 1 for fewer than 64 photos."""
    if workers is not None:
        if int(workers) < 1:
            raise ValueError('workers must be at least 1, got %r' % (workers,))
        return int(workers)
    if num_photos is not None and num_photos < 64:
        return 1
    from ..runtime.threads import physical_cores
    return max(1, min(8, physical_cores()))


def _encoded_in_order(encoder, tasks, workers):
    """Yield ``_encode_or_error`` of each ``(path, rel)`` task, in order, over ``workers``
    processes (spawned: MXNet's and dlib's threads do not survive a fork)."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _encode_or_error(task, encoder)
        return
    import multiprocessing
    with multiprocessing.get_context('spawn').Pool(
            workers, initializer=_start_worker, initargs=(encoder,)) as pool:
        for result in pool.imap(_encode_or_error, tasks, chunksize=4):
            yield result


def _bar(total, desc, progress):
    return tqdm(total=total, desc=desc, unit='img', file=sys.stderr, disable=not progress,
                dynamic_ncols=True)


# ----------------------------------------------------------------------------- pairs

def sample_pairs(images_by_identity, num_pairs=None, seed=0):
    """Sample distinct verification pairs, half same person and half different, deterministically.

    ``images_by_identity``: mapping identity -> its images (a sequence) or image count, in a
    deterministic order. ``num_pairs``: total pairs (same = num_pairs // 2, different = the
    rest); ``None`` takes as many as possible up to ``DEFAULT_MAX_PAIRS`` of each. Returns a
    list of ``((id_a, idx_a), (id_b, idx_b), issame)`` alternating same and different pairs, so
    that consecutive folds stay balanced. Every pair is drawn uniformly among the distinct
    pairs of its kind; ValueError when fewer exist than asked for.
    """
    counts = [(ident, n if isinstance(n, (int, np.integer)) else len(n))
              for ident, n in images_by_identity.items()]
    counts = [(ident, int(n)) for ident, n in counts if n > 0]
    sizes = [n for _, n in counts]
    total_images = sum(sizes)
    total_same = sum(n * (n - 1) // 2 for n in sizes)
    total_diff = (total_images ** 2 - sum(n * n for n in sizes)) // 2
    if num_pairs is None:
        num_same = num_diff = min(DEFAULT_MAX_PAIRS, total_same, total_diff)
        if num_same == 0:
            raise ValueError('cannot sample verification pairs from %d identities with %s '
                             'images: need two people and someone with two photos'
                             % (len(counts), sizes))
    else:
        num_pairs = int(num_pairs)
        if num_pairs < 2:
            raise ValueError('num_pairs must be at least 2 (one same, one different pair)')
        num_same = num_pairs // 2
        num_diff = num_pairs - num_same
    if num_same > total_same:
        raise ValueError('asked for %d same-person pairs, but only %d distinct ones exist '
                         '(%d identities, %d images)' % (num_same, total_same, len(counts),
                                                         total_images))
    if num_diff > total_diff:
        raise ValueError('asked for %d different-person pairs, but only %d distinct ones exist '
                         '(%d identities)' % (num_diff, total_diff, len(counts)))
    rng = random.Random(seed)
    # Flat image numbering: identity k owns flat indices starts[k] .. starts[k] + n_k - 1.
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()

    def owner(flat):
        return bisect.bisect_right(starts, flat) - 1

    def same_all():
        return [(starts[k] + i, starts[k] + j)
                for k, n in enumerate(sizes) for i in range(n) for j in range(i + 1, n)]

    weights = np.cumsum([n * (n - 1) // 2 for n in sizes]).tolist()

    def same_draw():
        k = bisect.bisect_right(weights, rng.randrange(total_same))
        i, j = sorted(rng.sample(range(sizes[k]), 2))
        return starts[k] + i, starts[k] + j

    def diff_all():
        return [(a, b) for a in range(total_images) for b in range(a + 1, total_images)
                if owner(a) != owner(b)]

    def diff_draw():
        while True:
            a, b = sorted(rng.sample(range(total_images), 2))
            if owner(a) != owner(b):
                return a, b

    same = _distinct(rng, num_same, total_same, same_all, same_draw)
    diff = _distinct(rng, num_diff, total_diff, diff_all, diff_draw)
    out = []
    for i in range(max(len(same), len(diff))):
        for flat_pairs, issame in ((same, True), (diff, False)):
            if i < len(flat_pairs):
                a, b = flat_pairs[i]
                ka, kb = owner(a), owner(b)
                out.append(((counts[ka][0], a - starts[ka]), (counts[kb][0], b - starts[kb]),
                            issame))
    return out


def _distinct(rng, k, total, enumerate_all, draw):
    """``k`` distinct items uniformly: by enumeration when few exist, else by rejection."""
    if k == 0:
        return []
    if total <= 200000 or 2 * k > total:
        return rng.sample(enumerate_all(), k)
    seen, out = set(), []
    while len(out) < k:
        item = draw()
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


# ----------------------------------------------------------------------------- output folder

def _is_empty_dir(path):
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def _check_out_dir(out_dir, overwrite):
    if os.path.lexists(out_dir) and not _is_empty_dir(out_dir):
        if not overwrite:
            raise FileExistsError('%s already exists and is not empty; choose a new output folder '
                                  '(or pass overwrite=True / --overwrite to move the old one '
                                  'aside; nothing is deleted)' % out_dir)


class _StagingDir:
    """A hidden sibling of ``out_dir`` to build in; ``commit()`` renames it into place.

    On failure the staging folder is removed and ``out_dir`` is untouched. With ``overwrite``,
    an existing non-empty ``out_dir`` is renamed to ``<out_dir>.old-<id>``, never deleted.
    """

    def __init__(self, out_dir, overwrite=False):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.overwrite = overwrite
        self.moved_aside = None
        _check_out_dir(self.out_dir, overwrite)
        parent, base = os.path.split(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self.path = os.path.join(parent, '.%s.tmp-%s' % (base, uuid.uuid4().hex[:12]))
        os.mkdir(self.path)

    def commit(self):
        _check_out_dir(self.out_dir, self.overwrite)  # something may have appeared meanwhile
        if os.path.lexists(self.out_dir):
            if _is_empty_dir(self.out_dir):
                os.rmdir(self.out_dir)
            else:
                self.moved_aside = '%s.old-%s' % (self.out_dir, uuid.uuid4().hex[:8])
                os.replace(self.out_dir, self.moved_aside)
        os.replace(self.path, self.out_dir)

    def cleanup(self):
        if os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.cleanup()


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_val_name(val_name):
    if not re.match(r'^[A-Za-z0-9_][A-Za-z0-9_.-]*$', val_name or '') or val_name == 'train':
        raise ValueError('val_name must be a plain file name such as "val" or "lfw" (letters, '
                         'digits, _ . -; not "train"), got %r' % (val_name,))


# ----------------------------------------------------------------------------- prepare

def prepare_dataset(src_dir, out_dir, image_size=(112, 112), formats=FORMATS, landmarks=None,
                    holdout=0, val_name='val', num_pairs=None, min_images=1, jpeg_quality=95,
                    seed=0, skip_bad=False, overwrite=False, progress=True, detect=None,
                    detect_policy='largest', workers=None):
    """Convert per-person photo folders into a training dataset folder ``out_dir``.

    ``src_dir`` holds one folder per person (any names); class ids 0..K-1 follow the sorted
    folder names of the people kept for training. People with fewer than ``min_images``
    usable photos are dropped. Each photo is decoded to RGB, aligned with ``align_face`` when
    ``landmarks`` (a landmarks file, see ``read_landmarks``, or a mapping ``relative/path`` ->
    (5, 2)) is given, else resized to ``image_size`` (H, W) when its size differs, and stored as
    a JPEG (``jpeg_quality``) encoded from BGR.

    ``out_dir`` receives, per ``formats`` (``'rec'``, ``'folders'``): ``train.rec`` +
    ``train.idx`` (InsightFace layout with header record) and/or ``%08d`` identity folders;
    ``property`` (``num_classes,H,W`` and the image count); ``identities.tsv``
    (``class_id<TAB>folder name``). With ``holdout=K``, K people with at least two photos
    (chosen with ``seed``) stay out of training; ``num_pairs`` pairs of their photos (see
    ``sample_pairs``) form ``<val_name>.bin``, and their names are listed in
    ``<val_name>_identities.txt``.

    With ``detect`` ('auto', 'hog' or 'cnn'; dlib, see :func:`gluon_arcface.data.detect.find_face`)
    the face of each photo is found and aligned to the ArcFace template at ``image_size``
    instead: the largest face, unless another of similar size is there (``detect_policy=
    'largest'``), or only photos with exactly one face (``'skip'``). Photos without a face to
    keep, and photos that do not decode, are skipped, never guessed at; they are listed
    (``path<TAB>reason``) in ``out_dir/skipped.tsv`` and in the summary.

    Photos are decoded, detected and encoded in ``workers`` processes (see
    :func:`encoding_workers`); the output does not depend on their number.

    An undecodable photo raises ``FaceDataError`` naming it, or with ``skip_bad`` is skipped
    (as is a photo missing from the landmarks). ``out_dir`` must not exist or be empty (with
    ``overwrite`` an existing one is renamed to ``<out_dir>.old-<id>``); the output is built in a
    hidden sibling folder and appears under ``out_dir`` only when complete.

    Returns a summary dict: ``identities``, ``images`` (training), ``holdout`` (names),
    ``holdout_images``, ``pairs``, ``same_pairs``, ``dropped`` ([(name, usable photos)]),
    ``skipped`` ([(path, reason)]), ``resized``, ``aligned``, ``moved_aside`` and the settings.
    """
    src_dir, out_dir = os.fspath(src_dir), os.path.abspath(os.fspath(out_dir))
    image_size = _image_size(image_size)
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError('formats must be a non-empty selection of %s, got %r' % (FORMATS,
                                                                                 formats))
    min_images, holdout = int(min_images), int(holdout)
    if min_images < 1 or holdout < 0:
        raise ValueError('min_images must be >= 1 and holdout >= 0')
    if holdout:
        _check_val_name(val_name)
    if _inside(out_dir, src_dir) or _inside(src_dir, out_dir):
        raise ValueError('the output folder %s and the source folder %s overlap; choose another '
                         'output folder' % (out_dir, src_dir))
    _check_out_dir(out_dir, overwrite)
    if detect is not None:
        from .detect import DETECTORS, POLICIES
        if detect not in DETECTORS or detect_policy not in POLICIES:
            raise ValueError('detect must be one of %s and detect_policy one of %s, got %r, %r'
                             % (DETECTORS, POLICIES, detect, detect_policy))
        if landmarks is not None:
            raise ValueError('give landmarks or detect, not both')
        skip_bad = True
    lm, lm_source = _as_landmarks(landmarks)
    encoder = _FaceEncoder(image_size, lm, lm_source, jpeg_quality, detect, detect_policy)

    people = scan_identities(src_dir)
    dropped = [(name, len(files)) for name, files in people if len(files) < min_images]
    people = [(name, files) for name, files in people if len(files) >= min_images]
    held = set()
    if holdout:
        eligible = sorted(name for name, files in people if len(files) >= 2)
        if holdout > len(eligible) or holdout >= len(people):
            raise ValueError('holdout=%d, but only %d of the %d people kept have two or more '
                             'photos, and at least one person must stay for training'
                             % (holdout, len(eligible), len(people)))
        if holdout < 2:
            raise ValueError('holdout must be at least 2 (different-person pairs need two '
                             'people), got %d' % holdout)
        held = set(random.Random(seed).sample(eligible, holdout))

    skipped, held_images = [], collections.OrderedDict()
    identities = []  # (class id, name, count)
    tasks = [(os.path.join(src_dir, name, fname), name + '/' + fname)
             for name, files in people for fname in files]
    workers = encoding_workers(workers, len(tasks))
    with _StagingDir(out_dir, overwrite) as stage, \
            _bar(sum(len(f) for _, f in people), 'prepare %s' % os.path.basename(out_dir),
                 progress) as bar, \
            contextlib.closing(_encoded_in_order(encoder, tasks, workers)) as results:
        # Images stream into the .rec as they are encoded (only held-out ones stay in memory).
        rec = (FaceRecWriter(os.path.join(stage.path, 'train.rec'))
               if 'rec' in formats else None)
        for name, files in people:
            encoded = []
            for fname in files:
                path = os.path.join(src_dir, name, fname)
                done, err = next(results)
                if err is not None:
                    if not skip_bad or not _skippable(err):
                        raise err
                    skipped.append((path, err.reason))
                else:
                    encoder.count(done[1], name + '/' + fname)
                    encoded.append((fname, done[0]))
                bar.update()
            if name in held:
                held_images[name] = [buf for _, buf in encoded]
                continue
            if len(encoded) < min_images:
                dropped.append((name, len(encoded)))
                continue
            class_id = len(identities)
            identities.append((class_id, name, len(encoded)))
            if 'folders' in formats:
                _write_identity_folder(os.path.join(stage.path, '%08d' % class_id), encoded)
            if rec is not None:
                for _, buf in encoded:
                    rec.add(class_id, buf)
        if not identities:
            if rec is not None:
                rec.abort()
            raise FaceDataError(src_dir, 'no person has %d or more usable photos: nothing to '
                                'train on%s' % (min_images, _skip_note(skipped)))
        num_images = sum(n for _, _, n in identities)
        if rec is not None:
            rec.close()
        write_property(stage.path, len(identities), image_size, num_images)
        write_text(os.path.join(stage.path, 'identities.tsv'),
                   ''.join('%d\t%s\n' % (cid, name) for cid, name, _ in identities))
        if skipped or detect is not None:
            write_text(os.path.join(stage.path, 'skipped.tsv'), 'path\treason\n' + ''.join(
                '%s\t%s\n' % (_one_field(p), _one_field(r)) for p, r in skipped))
        pairs = []
        if holdout:
            pairs = sample_pairs(held_images, num_pairs, seed)
            write_bin(os.path.join(stage.path, val_name + '.bin'),
                      [held_images[ident][idx] for a, b, _ in pairs for ident, idx in (a, b)],
                      [issame for _, _, issame in pairs])
            write_text(os.path.join(stage.path, val_name + '_identities.txt'),
                       ''.join(name + '\n' for name in held_images))
        stage.commit()
    unused = len(lm) - len(encoder.used_landmarks) if lm is not None else 0
    return collections.OrderedDict([
        ('out_dir', out_dir), ('formats', list(formats)), ('image_size', image_size),
        ('identities', len(identities)), ('images', num_images),
        ('holdout', sorted(held_images)),
        ('holdout_images', sum(len(v) for v in held_images.values())),
        ('val_name', val_name if holdout else None), ('pairs', len(pairs)),
        ('same_pairs', sum(1 for p in pairs if p[2])), ('dropped', dropped),
        ('skipped', skipped), ('resized', encoder.resized), ('aligned', encoder.aligned),
        ('unused_landmarks', unused), ('moved_aside', stage.moved_aside),
        ('detect', detect), ('detect_policy', detect_policy if detect else None)])


def _skippable(err):
    from .detect import NoFaceError
    return (isinstance(err, (ImageDecodeError, NoFaceError))
            or err.reason.startswith('no landmarks for'))


def _one_field(text):
    return re.sub(r'[\t\r\n]+', ' ', str(text))


def _skip_note(skipped):
    if not skipped:
        return ''
    return '; %d photo(s) were skipped, e.g. %s: %s' % (len(skipped), *skipped[0])


def _write_identity_folder(folder, encoded):
    os.mkdir(folder)
    used = set()
    for fname, buf in encoded:
        stem = os.path.splitext(fname)[0]
        out, k = stem + '.jpg', 1
        while out in used:  # e.g. a.png beside a.jpg
            out, k = '%s_%d.jpg' % (stem, k), k + 1
        used.add(out)
        with open(os.path.join(folder, out), 'wb') as f:
            f.write(buf)


def bin_from_pairs(pairs_txt, image_root, out_path, image_size=(112, 112), landmarks=None,
                   ext='.jpg', jpeg_quality=95, overwrite=False, progress=True):
    """Write a verification ``.bin`` from an LFW-style pairs.txt (see ``read_pairs``).

    Photo ``i`` of ``name`` is ``image_root/name/name_%04d<ext>``. Every line is validated and
    every photo checked to exist before any is decoded; each is then aligned (``landmarks``, keys
    ``name/name_%04d<ext>``) or resized to ``image_size`` and JPEG-encoded. Pairs keep file
    order. ``out_path`` is written to a temporary name and renamed; an existing file is only
    replaced with ``overwrite``. Returns a summary dict.
    """
    pairs_txt, image_root, out_path = (os.fspath(pairs_txt), os.fspath(image_root),
                                       os.fspath(out_path))
    if os.path.lexists(out_path) and not overwrite:
        raise FileExistsError('%s already exists; choose another name (or pass overwrite=True / '
                              '--overwrite to replace it)' % out_path)
    image_size = _image_size(image_size)
    if not os.path.isdir(image_root):
        raise FaceDataError(image_root, 'image folder not found')
    pairs = read_pairs(pairs_txt)
    lm, lm_source = _as_landmarks(landmarks)
    encoder = _FaceEncoder(image_size, lm, lm_source, jpeg_quality)
    rels = []
    for p in pairs:
        for name, index in ((p.name_a, p.index_a), (p.name_b, p.index_b)):
            rel = '%s/%s_%04d%s' % (name, name, index, ext)
            if not os.path.isfile(os.path.join(image_root, rel)):
                raise FaceDataError(pairs_txt, 'image %s not found (expected %s)'
                                    % (rel, os.path.join(image_root, rel)), line=p.line)
            rels.append(rel)
    cache = {}
    unique = list(collections.OrderedDict.fromkeys(rels))
    with _bar(len(unique), 'encode %s' % os.path.basename(out_path), progress) as bar:
        for rel in unique:
            cache[rel] = encoder(os.path.join(image_root, rel), rel)
            bar.update()
    write_bin(out_path, [cache[rel] for rel in rels], [p.issame for p in pairs])
    return collections.OrderedDict([
        ('out_path', os.path.abspath(out_path)), ('pairs', len(pairs)),
        ('same_pairs', sum(p.issame for p in pairs)), ('images', len(unique)),
        ('image_size', image_size), ('resized', encoder.resized), ('aligned', encoder.aligned)])


# ----------------------------------------------------------------------------- reports

def format_summary(summary):
    """Human-readable lines for the dict ``prepare_dataset`` or ``bin_from_pairs`` returns."""
    lines = []
    h, w = summary['image_size']
    if 'out_path' in summary:
        lines.append('wrote %s: %d pairs (%d same, %d different) from %d images, %dx%d'
                     % (summary['out_path'], summary['pairs'], summary['same_pairs'],
                        summary['pairs'] - summary['same_pairs'], summary['images'], h, w))
    else:
        lines.append('wrote %s (%s): %d identities, %d images, %dx%d'
                     % (summary['out_dir'], ' + '.join(summary['formats']),
                        summary['identities'], summary['images'], h, w))
        if summary['holdout']:
            lines.append('held out %d identities (%d images) for %s.bin: %d pairs (%d same, %d '
                         'different): %s' % (
                             len(summary['holdout']), summary['holdout_images'],
                             summary['val_name'], summary['pairs'], summary['same_pairs'],
                             summary['pairs'] - summary['same_pairs'],
                             _shorten(summary['holdout'])))
        if summary['dropped']:
            lines.append('dropped %d identities with too few usable photos: %s'
                         % (len(summary['dropped']),
                            _shorten(['%s (%d)' % d for d in summary['dropped']])))
        if summary['skipped'] and summary.get('detect'):
            reasons = collections.Counter(_reason_kind(r) for _, r in summary['skipped'])
            lines.append('skipped %d photos (%s), listed in %s' % (
                len(summary['skipped']), ', '.join('%s: %d' % kv for kv in
                                                   sorted(reasons.items())),
                os.path.join(summary['out_dir'], 'skipped.tsv')))
        elif summary['skipped']:
            lines.append('skipped %d bad photos, e.g. %s: %s'
                         % (len(summary['skipped']), *summary['skipped'][0]))
        if summary.get('unused_landmarks'):
            lines.append('%d landmark lines matched no photo' % summary['unused_landmarks'])
        if summary.get('moved_aside'):
            lines.append('the previous %s was kept as %s' % (summary['out_dir'],
                                                              summary['moved_aside']))
    if summary['aligned'] and summary.get('detect'):
        lines.append('detected (%s) and aligned %d faces to the ArcFace 5-point template'
                     % (summary['detect'], summary['aligned']))
    elif summary['aligned']:
        lines.append('aligned %d images to the ArcFace 5-point template' % summary['aligned'])
    if summary['resized']:
        lines.append('resized %d images to %dx%d without alignment (no landmarks given): faces '
                     'are not aligned to the ArcFace template' % (summary['resized'], h, w))
    return '\n'.join(lines)


def _reason_kind(reason):
    if 'similar size' in reason:
        return 'several faces of similar size'
    if 'faces (' in reason:
        return 'several faces'
    if reason.startswith('no face'):
        return 'no face'
    return 'not an image'


def _shorten(items, n=10):
    items = list(items)
    return ', '.join(items[:n]) + (', ... (%d more)' % (len(items) - n) if len(items) > n else '')
