"""Face datasets on disk: ``property``, identity folders, RecordIO, and the chapter's loader.

A dataset folder holds ``property`` (``num_classes,H,W``), the training images either as
``%08d`` identity folders of JPEGs or as ``train.rec`` + ``train.idx``, and verification
``<target>.bin`` files. Items are ``(image, label)``: an RGB uint8 HWC ``mxnet.np`` array and an
int class id.
"""
import collections
import multiprocessing
import multiprocessing.context
import os
import random
import threading

import numpy as np
from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
from mxnet import gluon
from mxnet import np as mnp

from .augment import AUGMENT_PRESETS, FaceAugment
from .binfile import load_bin
from .images import decode_image, resize_face, to_network_input
from ..runtime.errors import FaceDataError, ImageDecodeError
from ..runtime.fileio import write_text
from .recordio import KeySequence, RecordReader

__all__ = ['read_facerec_meta', 'write_property', 'open_face_dataset', 'dataset_people',
           'FaceFolderDataset', 'FaceRecordDataset', 'FaceTrainTransform', 'FaceDataLoader',
           'SkippedImage', 'load_data_face_rec',
           'list_val_targets', 'IMAGE_EXTENSIONS', 'load_pairs']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def read_facerec_meta(data_dir):
    """Read ``data_dir/property`` -> ``((H, W), num_classes)``.

    The first line is ``num_classes,H,W``; a second line, when present, holds the image count.
    """
    path = os.path.join(data_dir, 'property')
    try:
        with open(path, encoding='utf-8-sig') as f:
            lines = f.read(4096).splitlines()
    except FileNotFoundError:
        raise FaceDataError(path, 'property file not found; it holds "num_classes,height,width" '
                            '(e.g. "300,112,112")') from None
    except UnicodeDecodeError:
        raise FaceDataError(path, 'expected a text line "num_classes,height,width"') from None
    except OSError as e:
        raise FaceDataError(path, 'cannot read the property file (%s); it holds '
                            '"num_classes,height,width"' % (e.strerror or e)) from None
    first = lines[0].strip() if lines else ''
    try:
        num_classes, height, width = (int(v) for v in first.split(','))
        if min(num_classes, height, width) <= 0:
            raise ValueError
    except ValueError:
        raise FaceDataError(path, 'expected "num_classes,height,width" with positive integers, '
                            'got %r' % first[:80], line=1) from None
    return (height, width), num_classes


def write_property(data_dir, num_classes, image_size, num_images=None):
    """Write ``data_dir/property``: ``num_classes,H,W`` and optionally the image count."""
    text = '%d,%d,%d\n' % (num_classes, image_size[0], image_size[1])
    if num_images is not None:
        text += '%d\n' % num_images
    write_text(os.path.join(data_dir, 'property'), text)


SkippedImage = collections.namedtuple('SkippedImage', ['path', 'record', 'reason'])
SkippedImage.__doc__ = ('An image left out by ``skip_bad``: the file, the record (RecordIO key, '
                        'None for an image file) and why it does not decode.')


class _FaceDataset(gluon.data.Dataset):
    """Shared checks of both layouts: label range, image size, optional skipping of bad images.

    With ``skip_bad``, the indices of skipped images are also flagged in a small shared-memory
    array, so that ``skipped`` lists the images skipped by DataLoader worker processes too.
    """

    def __init__(self, num_classes=None, image_size=None, skip_bad=False):
        self.num_classes = num_classes
        self.image_size = tuple(image_size) if image_size else None
        self.skip_bad = skip_bad
        self._skips = {}  # item index -> SkippedImage, found in this process
        self._skip_flags = None  # shared bytes, 1 = skipped (any process); see _share_skips
        self._lock = threading.Lock()

    def _share_skips(self):
        """Called at the end of a subclass's __init__, once the length is known."""
        if self.skip_bad and len(self):
            self._skip_flags = multiprocessing.RawArray('b', len(self))

    def _check_label(self, label, source, record):
        if self.num_classes is not None and not 0 <= label < self.num_classes:
            raise FaceDataError(source, 'label %d is outside [0, %d) given by property'
                                % (label, self.num_classes), record=record)
        if label < 0:
            raise FaceDataError(source, 'label %d is negative, expected a class id >= 0'
                                % label, record=record)

    def _check_size(self, img, source, record):
        if self.image_size is not None and img.shape[:2] != self.image_size:
            raise FaceDataError(source, 'image is %dx%d, property says %dx%d (HxW); re-align the '
                                'images or fix property' % (img.shape[0], img.shape[1],
                                                            *self.image_size), record=record)

    def _load(self, idx):
        raise NotImplementedError

    @property
    def skipped(self):
        """Images skipped by ``skip_bad`` so far (in this process or in worker processes), in
        item order: a list of ``SkippedImage(path, record, reason)``."""
        with self._lock:
            found = dict(self._skips)
        if self._skip_flags is not None:
            flagged = np.frombuffer(self._skip_flags, dtype=np.int8).nonzero()[0]
            for idx in flagged:
                if int(idx) not in found:  # skipped in a worker process: find out why again
                    found[int(idx)] = self._why(int(idx))
            with self._lock:
                for idx, item in found.items():
                    self._skips.setdefault(idx, item)
        return [found[i] for i in sorted(found)]

    def _why(self, idx):
        try:
            self._load(idx)
        except ImageDecodeError as e:
            return SkippedImage(e.path, e.record, e.reason)
        return SkippedImage(getattr(self, 'source', '<dataset>'), idx,
                            'did not decode in a worker process')

    def __getstate__(self):  # locks do not cross process boundaries
        state = self.__dict__.copy()
        del state['_lock']
        if multiprocessing.context.get_spawning_popen() is None:
            state['_skip_flags'] = None  # shared memory only passes to a process being started
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _skip(self, idx, err):
        with self._lock:
            self._skips.setdefault(idx, SkippedImage(err.path, err.record, err.reason))
        if self._skip_flags is not None:
            self._skip_flags[idx] = 1

    def __getitem__(self, idx):
        if not self.skip_bad:
            img, label = self._load(idx)
            return mnp.array(img, dtype='uint8'), label
        # With skip_bad, an undecodable image is replaced by the next good one and recorded.
        n = len(self)
        if idx < 0:
            idx += n
        for step in range(n):
            candidate = (idx + step) % n
            if step and self._skip_flags is not None and self._skip_flags[candidate]:
                continue  # known to be bad
            try:
                img, label = self._load(candidate)
                return mnp.array(img, dtype='uint8'), label
            except ImageDecodeError as e:
                self._skip(candidate, e)
        raise FaceDataError(getattr(self, 'source', '<dataset>'), 'none of the %d images '
                            'decodes (skip_bad=True skipped them all)' % n)


class FaceFolderDataset(_FaceDataset):
    """Images in ``%08d`` identity folders (00000000/, 00000001/, ...); label = folder number.

    ``num_classes`` and ``image_size`` (H, W), when given (e.g. from property), are checked
    against every label and image. ``skip_bad`` replaces undecodable images by the next good one
    and lists them in ``skipped`` instead of raising.
    """

    def __init__(self, data_dir, num_classes=None, image_size=None, skip_bad=False):
        super().__init__(num_classes, image_size, skip_bad)
        self.source = self.data_dir = os.fspath(data_dir)
        if not os.path.isdir(self.data_dir):
            raise FaceDataError(self.data_dir, 'dataset folder not found')
        self.items = []
        others = []
        for name in sorted(_listdir(self.data_dir)):
            folder = os.path.join(self.data_dir, name)
            if not os.path.isdir(folder) or name.startswith('.'):
                continue
            if not (name.isdigit() and name.isascii()):
                others.append(name)
                continue
            label = int(name)
            self._check_label(label, folder, None)
            for fname in sorted(_listdir(folder)):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    self.items.append((os.path.join(folder, fname), label))
        if others and not self.items:
            raise FaceDataError(self.data_dir, 'expected identity folders named by class id '
                                '(00000000, 00000001, ...), found %s; convert a folder of '
                                'per-person folders with scripts/prepare_data.py'
                                % ', '.join(others[:3]))
        self._share_skips()

    def __len__(self):
        return len(self.items)

    def label_of(self, idx):
        """Class id of item ``idx`` (its folder's number)."""
        return self.items[idx][1]

    def _load(self, idx):
        path, label = self.items[idx]
        try:
            with open(path, 'rb') as f:
                buf = f.read()
        except OSError as e:
            raise FaceDataError(path, 'cannot read the image file (%s)' % (e.strerror or e)
                                ) from None
        img = decode_image(buf, path)
        self._check_size(img, path, None)
        return img, label


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError as e:
        raise FaceDataError(folder, 'cannot list the folder (%s)' % (e.strerror or e)) from None


class FaceRecordDataset(_FaceDataset):
    """Images in ``train.rec`` + ``train.idx`` (the ``.idx`` beside ``rec_path`` by default).

    Reads both layouts found in the wild: InsightFace's (record 0 has label ``[a, b]`` and an
    empty image; images are keys 1..a-1; keys a..b-1 give each identity's key range) and the
    headerless im2rec layout (every key an image). Labels may be a float or an array whose first
    value is the class id. ``identity_ranges`` maps class id -> (first key, end key) when the
    header provides it. ``keys`` are the record keys of the images, item by item: a
    :class:`~gluon_arcface.data.recordio.KeySequence` over a numpy array (a view of the reader's
    index when it is in key order), so that opening MS1M's 5.8 million images makes no Python
    list of them.
    """

    def __init__(self, rec_path, idx_path=None, num_classes=None, image_size=None,
                 skip_bad=False, partial_index=False):
        super().__init__(num_classes, image_size, skip_bad)
        self.reader = RecordReader(rec_path, idx_path, partial_index=partial_index)
        self.source = self.rec_path = self.reader.rec_path
        self.identity_ranges = None
        self.keys = self._image_keys()
        self._share_skips()

    def _header_ints(self, values, key, what):
        """The float32 label values of a header/identity record as ints, or FaceDataError."""
        out = []
        for v in values:
            if not np.isfinite(v) or v != int(v) or v < 0:
                raise FaceDataError(self.rec_path, '%s: expected non-negative integer key '
                                    'numbers, got %s' % (what, [float(x) for x in values]),
                                    record=key)
            out.append(int(v))
        return out

    def _image_keys(self):
        reader = self.reader
        if not len(reader):
            return KeySequence(np.empty(0, np.int64))
        first = 0 if 0 in reader else reader.keys[0]
        header, img = reader.read_header(first)
        if header.flag == 0 or len(img) > 0:
            return reader.keys  # headerless: record 0 is an ordinary image
        if header.flag < 2:
            raise FaceDataError(self.rec_path, 'header record has %d label value(s), expected '
                                '[first identity key, end key]' % header.flag, record=first)
        a, b = self._header_ints(header.label[:2], first,
                                 'header record label [first identity key, end key]')
        if not 1 <= a <= b:
            raise FaceDataError(self.rec_path, 'header record label [%d, %d] is not a valid '
                                '[first identity key, end key] pair (expected 1 <= first <= end)'
                                % (a, b), record=first)
        missing = [k for k in (1, a - 1) if k < a and k not in reader]
        if missing:
            raise FaceDataError(reader.idx_path, 'header record says images are keys 1..%d but '
                                'key %d is not in the index' % (a - 1, missing[0]))
        if b - a > len(reader):
            raise FaceDataError(self.rec_path, 'header record announces %d identity records '
                                '(keys %d..%d) but the index has only %d records'
                                % (b - a, a, b - 1, len(reader)), record=first)
        if b > a and a in reader and (b - 1) in reader:
            self.identity_ranges = {}
            for class_id, key in enumerate(range(a, b)):
                if key in reader:
                    lab = reader.read_header(key)[0].label
                    if np.ndim(lab) and len(lab) >= 2:
                        lo, hi = self._header_ints(lab[:2], key, 'identity record label '
                                                   '[first image key, end key]')
                        if lo > hi:
                            raise FaceDataError(self.rec_path, 'identity record of class %d '
                                                'gives the key range [%d, %d), expected '
                                                'start <= end' % (class_id, lo, hi), record=key)
                        self.identity_ranges[class_id] = (lo, hi)
        return KeySequence(reader.index.keys_between(1, a))

    def __len__(self):
        return len(self.keys)

    def label_of(self, idx):
        """Class id of item ``idx`` without decoding its image."""
        key = self.keys[idx]
        return self._label(self.reader.read_header(key)[0], key)

    def _label(self, header, key):
        value = header.label if np.ndim(header.label) == 0 else (
            header.label[0] if len(header.label) else None)
        if value is None or not np.isfinite(value) or value != int(value):
            raise FaceDataError(self.rec_path, 'expected an integer class id as label (or as '
                                'label[0]), got %s' % (np.round(header.label, 4).tolist(),),
                                record=key)
        label = int(value)
        self._check_label(label, self.rec_path, key)
        return label

    def _load(self, idx):
        key = self.keys[idx]
        header, buf = self.reader.read_header(key)
        label = self._label(header, key)
        img = decode_image(buf, self.rec_path, key)
        self._check_size(img, self.rec_path, key)
        return img, label


class FaceTrainTransform:
    """The training transform: resize (when ``image_size`` differs), augment, then ToTensor.

    ``(HWC uint8 image) -> (3, H, W) float32 numpy array in [0, 1]``. The augmentation is
    ``augment`` (an :class:`~gluon_arcface.data.augment.AugmentSettings`), or the chapter's random
    left-right flip when ``flip`` (the default); each worker thread or process draws from its own
    generator, seeded from ``seed`` and the order in which the threads start.
    """

    def __init__(self, flip=True, seed=None, augment=None, image_size=None):
        self.flip, self.seed = flip, seed
        self.image_size = tuple(image_size) if image_size else None
        if augment is None:
            augment = AUGMENT_PRESETS['flip' if flip else 'none']
        self.augment = augment
        self._augment = FaceAugment(augment)
        self._local, self._lock, self._users = threading.local(), threading.Lock(), 0

    def _rng(self):
        rng = getattr(self._local, 'rng', None)
        if rng is None or self._local.pid != os.getpid():
            with self._lock:  # number the threads in order of first use
                ordinal, self._users = self._users, self._users + 1
            rng = random.Random(None if self.seed is None else self.seed * 1000003 + ordinal)
            self._local.rng, self._local.pid = rng, os.getpid()
        return rng

    def __call__(self, img):
        img = img.asnumpy() if hasattr(img, 'asnumpy') else np.asarray(img)
        if self.image_size is not None:
            img = resize_face(img, self.image_size)
        if self.augment.active:
            img = self._augment(img, self._rng())
        return to_network_input(img)

    def __getstate__(self):
        return {'flip': self.flip, 'seed': self.seed, 'augment': self.augment,
                'image_size': self.image_size}

    def __setstate__(self, state):
        self.__init__(**state)


def list_val_targets(data_dir):
    """Names of the verification sets (``<name>.bin``) in ``data_dir``."""
    return sorted(f[:-4] for f in os.listdir(data_dir) if f.endswith('.bin'))


def _load_val_set(data_dir, val_targets, image_size):
    val_set = {}
    for target in val_targets:
        path = os.path.join(data_dir, target + '.bin')
        if not os.path.isfile(path):
            present = ', '.join(list_val_targets(data_dir)) or 'none'
            raise FaceDataError(path, 'verification set %r not found; .bin files in %s: %s'
                                % (target, data_dir, present))
        val_set[target] = load_bin(path, image_size)
    return val_set


class FaceDataLoader(gluon.data.DataLoader):
    """The loader ``load_data_face_rec`` returns: a gluon DataLoader that also tells what it reads.

    ``dataset_info``: dict(source, images (this worker's part), all_images, num_classes,
    image_size, batch_size, num_workers);
    ``face_dataset``: the FaceRecordDataset / FaceFolderDataset behind it; ``transform``: the
    FaceTrainTransform applied to each image (its ``augment`` settings, ``image_size``, ``seed``);
    ``skipped``: the images left out so far by ``skip_bad=True`` (also those skipped in worker
    processes), a list of ``SkippedImage(path, record, reason)``.
    """

    def __init__(self, dataset, face_dataset, dataset_info, transform=None, **kwargs):
        self.face_dataset, self.dataset_info, self.transform = face_dataset, dataset_info, transform
        super().__init__(dataset, **kwargs)

    @property
    def skipped(self):
        return self.face_dataset.skipped


def open_face_dataset(data_dir, skip_bad=False):
    """A dataset folder's images as a FaceRecordDataset (``train.rec`` + ``train.idx``) or a
    FaceFolderDataset (identity folders), checked against its ``property``; ``ds[i]`` is (RGB
    uint8 (H, W, 3), class id)."""
    image_size, num_classes = read_facerec_meta(data_dir)
    rec_path = os.path.join(data_dir, 'train.rec')
    if os.path.isfile(rec_path):
        return FaceRecordDataset(rec_path, num_classes=num_classes, image_size=image_size,
                                 skip_bad=skip_bad)
    return FaceFolderDataset(data_dir, num_classes=num_classes, image_size=image_size,
                             skip_bad=skip_bad)


def dataset_people(data_dir):
    """A dataset folder's images by person -> ``[(name, [(source, RGB uint8 image)])]``,
    in the order of the images; names from ``identities.tsv`` (``class id<TAB>name``), else
    the class id as ``%08d``; ``source`` is ``<folder name>#<image index>``."""
    dataset = open_face_dataset(data_dir)
    names = {}
    tsv = os.path.join(data_dir, 'identities.tsv')
    if os.path.isfile(tsv):
        with open(tsv, encoding='utf-8') as f:
            for i, line in enumerate(f, 1):
                parts = line.rstrip('\n').split('\t')
                if len(parts) != 2 or not parts[0].isdigit():
                    raise FaceDataError(tsv, 'expected "class id<TAB>name"', line=i)
                names[int(parts[0])] = parts[1]
    people = collections.OrderedDict()
    for i in range(len(dataset)):
        img, label = dataset[i]
        label = int(label)
        people.setdefault(names.get(label, '%08d' % label), []).append(
            ('%s#%d' % (os.path.basename(os.path.normpath(data_dir)), i), img.asnumpy()))
    return list(people.items())


def load_data_face_rec(data_dir, val_targets, batch_size, num_workers=2, shuffle=True,
                       skip_bad=False, num_parts=1, part_index=0, thread_pool=True, seed=None,
                       augment=None, image_size=None, exclude_identities=()):
    """The chapter's loader -> ``(loader, val_set)``.

    Training images come from ``train.rec`` when it exists, else from the ``%08d`` folders;
    each is flipped left-right at random (or augmented as ``augment``, an
    :class:`~gluon_arcface.data.augment.AugmentSettings`, says) and scaled to float32 [0, 1]
    (3, H, W). ``image_size`` (H, W) resizes the training and verification images (default: the
    size ``property`` gives). Batches are shuffled and the last partial batch is dropped.
    ``val_set[target]`` is ``load_bin(data_dir/<target>.bin)``. ``num_parts``/``part_index``
    give a worker of a distributed run its share of the images. Images are decoded by
    ``num_workers`` threads (OpenCV releases the GIL) or processes (``thread_pool=False``).

    Labels and image sizes are checked against ``property``; an image that does not decode
    raises ImageDecodeError, or with ``skip_bad=True`` is replaced by the next good one and
    listed in ``loader.skipped`` (a FaceDataLoader).

    ``exclude_identities``: class ids left out of training (e.g. to choose the best epoch on
    people the network does not train on); the others are renumbered 0.. in order,
    ``loader.dataset_info['num_classes']`` counts them and ``['held_out']`` maps each excluded
    id to its item indices in ``loader.face_dataset`` (see :func:`load_pairs`).
    """
    dataset = open_face_dataset(data_dir, skip_bad)
    image_size_prop, num_classes = dataset.image_size, dataset.num_classes
    face_dataset = dataset
    if len(dataset) == 0:
        raise FaceDataError(dataset.source, 'no training images: expected train.rec + train.idx '
                            'with image records, or %08d identity folders of images beside '
                            'property')
    held_out = None
    if len(exclude_identities):
        dataset = _IdentitySubset(dataset, exclude_identities)
        num_classes, held_out = num_classes - len(dataset.held_out), dataset.held_out
    if num_parts > 1:
        if not 0 <= part_index < num_parts:
            raise ValueError('part_index %d outside [0, %d)' % (part_index, num_parts))
        dataset = _Shard(dataset, num_parts, part_index)
    if len(dataset) < batch_size:
        raise FaceDataError(face_dataset.source,
                            '%d training images%s, fewer than one batch of %d (the last partial '
                            'batch is dropped, so nothing would be trained); use a smaller '
                            'batch size' % (len(dataset), ' for worker %d of %d' % (
                                part_index, num_parts) if num_parts > 1 else '', batch_size))
    input_size = tuple(image_size) if image_size else image_size_prop
    info = dict(source=face_dataset.source, images=len(dataset),
                all_images=len(face_dataset), num_classes=num_classes, held_out=held_out,
                image_size=input_size, batch_size=batch_size, num_workers=num_workers)
    transform = FaceTrainTransform(seed=seed, augment=augment,
                                   image_size=None if input_size == image_size_prop else input_size)
    loader = FaceDataLoader(
        dataset.transform_first(transform), face_dataset, info, transform,
        batch_size=batch_size, shuffle=shuffle, last_batch='discard', num_workers=num_workers,
        thread_pool=thread_pool)
    val_set = _load_val_set(data_dir, val_targets, input_size)
    return loader, val_set


class _IdentitySubset(gluon.data.Dataset):
    """The items of ``dataset`` whose identity is not in ``exclude``, renumbered 0.. in order;
    ``held_out`` maps each excluded identity to its item indices."""

    def __init__(self, dataset, exclude):
        self.dataset, self.source = dataset, getattr(dataset, 'source', None)
        exclude = set(int(i) for i in exclude)
        labels = [dataset.label_of(i) for i in range(len(dataset))]
        self.held_out = {i: [] for i in sorted(exclude)}
        kept = sorted(set(labels) - exclude)
        self.relabel = {old: new for new, old in enumerate(kept)}
        self.indices = []
        for idx, label in enumerate(labels):
            (self.held_out[label] if label in exclude else self.indices).append(idx)
        empty = [i for i, items in self.held_out.items() if not items]
        if empty:
            raise FaceDataError(self.source, 'identity %d has no images to hold out' % empty[0])

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, idx):
        img, label = self.dataset[self.indices[idx]]
        # With skip_bad a bad image is replaced by the next good one, which may be held out.
        step = 1
        while label not in self.relabel:
            img, label = self.dataset[self.indices[(idx + step) % len(self.indices)]]
            step += 1
        return img, self.relabel[label]


def load_pairs(dataset, pairs, image_size):
    """A verification set from items of a face dataset, as :func:`load_bin` returns one:
    ``pairs`` a list of ``(item_a, item_b, issame)`` -> ``([originals, flipped], issame)``,
    each (2N, 3, H, W) float32 in [0, 1] at ``image_size`` (H, W)."""
    out = np.empty((2 * len(pairs), 3) + tuple(image_size), dtype=np.float32)
    for i, item in enumerate(idx for a, b, _ in pairs for idx in (a, b)):
        img = dataset[item][0]
        img = img.asnumpy() if hasattr(img, 'asnumpy') else img
        to_network_input(resize_face(img, tuple(image_size)), out=out[i])
    flipped = np.ascontiguousarray(out[:, :, :, ::-1])
    return [mnp.array(out), mnp.array(flipped)], np.array([s for _, _, s in pairs], dtype=bool)


class _Shard(gluon.data.Dataset):
    """Every ``num_parts``-th item of a dataset starting at ``part_index``.

    Strided rather than contiguous, so that each worker sees all identities of a file sorted
    by identity.
    """

    def __init__(self, dataset, num_parts, part_index):
        self.dataset, self.num_parts, self.part_index = dataset, num_parts, part_index
        self.source = getattr(dataset, 'source', None)

    def __len__(self):
        return (len(self.dataset) - self.part_index + self.num_parts - 1) // self.num_parts

    def __getitem__(self, idx):
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        return self.dataset[self.part_index + idx * self.num_parts]
