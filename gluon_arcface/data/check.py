"""Checking a dataset folder, and repairing its RecordIO index.

* :func:`check_dataset`: decode every training image and load every ``.bin`` of a dataset
  folder (``scripts/prepare_data.py check``); :func:`format_check_report` prints what it found.
* :func:`rebuild_index`: rewrite a ``.rec``'s ``.idx`` from its records
  (``scripts/prepare_data.py index``), keeping a differing old one.
"""
import collections
import os
import shutil
import sys
import uuid

from tqdm import tqdm

from ..runtime.errors import FaceDataError
from .binfile import load_bin
from .datasets import FaceFolderDataset, FaceRecordDataset, list_val_targets, read_facerec_meta
from .recordio import build_index, scan_records

__all__ = ['check_dataset', 'format_check_report', 'rebuild_index']


def rebuild_index(rec_path, idx_path=None):
    """Rewrite the ``.idx`` of ``rec_path`` by scanning its records (keys 0, 1, ... in file order).

    A previous ``.idx`` that differs from the new one is kept as ``<idx>.old-<id>``.
    Returns ``(idx_path, number of records, path of the kept old index or None)``.
    """
    rec_path = os.fspath(rec_path)
    if not os.path.isfile(rec_path):
        raise FaceDataError(rec_path, 'RecordIO file not found')
    idx_path = os.fspath(idx_path) if idx_path else os.path.splitext(rec_path)[0] + '.idx'
    backup = None
    if os.path.isfile(idx_path):
        backup = '%s.old-%s' % (idx_path, uuid.uuid4().hex[:8])
        shutil.copy2(idx_path, backup)
    try:
        count = build_index(rec_path, idx_path)
    except BaseException:
        if backup:
            os.remove(backup)  # build_index leaves the old .idx in place when it fails
        raise
    if backup:
        with open(backup, 'rb') as old, open(idx_path, 'rb') as new:
            if old.read() == new.read():
                os.remove(backup)
                backup = None
    return idx_path, count, backup


def _read_image_count(data_dir):
    """The image count on line 2 of ``property`` (None when absent or not a number)."""
    with open(os.path.join(data_dir, 'property')) as f:
        lines = f.read().splitlines()
    try:
        return int(lines[1].strip())
    except (IndexError, ValueError):
        return None


def check_dataset(data_dir, max_errors=20, progress=True):
    """Decode every training image and load every ``.bin`` of a dataset folder.

    Reads ``property``, opens ``train.rec`` and/or the ``%08d`` folders with the ``num_classes``
    and image size from it, checks each image's label and size (and for ``train.rec`` that the
    identity ranges of the header agree with the labels), and loads each ``<name>.bin``.
    Returns a dict: ``errors`` (the first ``max_errors`` messages), ``num_errors``, ``warnings``,
    ``layouts`` ({'train.rec' / 'folders': images}), ``bins`` ({name: pairs}), ``num_classes``,
    ``image_size``. The dataset is fine when ``num_errors == 0``.
    """
    data_dir = os.fspath(data_dir)
    report = collections.OrderedDict([
        ('data_dir', data_dir), ('num_classes', None), ('image_size', None),
        ('layouts', collections.OrderedDict()), ('bins', collections.OrderedDict()),
        ('errors', []), ('num_errors', 0), ('warnings', [])])

    def error(msg):
        report['num_errors'] += 1
        if len(report['errors']) < max_errors:
            report['errors'].append(str(msg))

    if not os.path.isdir(data_dir):
        error(FaceDataError(data_dir, 'dataset folder not found'))
        return report
    try:
        image_size, num_classes = read_facerec_meta(data_dir)
        count = _read_image_count(data_dir)
    except FaceDataError as e:
        error(e)
        return report
    report['num_classes'], report['image_size'] = num_classes, image_size
    datasets = []
    rec_path = os.path.join(data_dir, 'train.rec')
    if os.path.isfile(rec_path):
        try:
            datasets.append(('train.rec', FaceRecordDataset(
                rec_path, num_classes=num_classes, image_size=image_size)))
        except FaceDataError as e:
            error(e)
            report['layouts']['train.rec'] = None
    if any(n.isdigit() and os.path.isdir(os.path.join(data_dir, n))
           for n in os.listdir(data_dir)):
        try:
            datasets.append(('folders', FaceFolderDataset(
                data_dir, num_classes=num_classes, image_size=image_size)))
        except FaceDataError as e:
            error(e)
            report['layouts']['folders'] = None
    if not datasets and not report['layouts']:
        error(FaceDataError(data_dir, 'no training images: expected train.rec + train.idx or '
                            '%08d identity folders beside property'))
    for layout, ds in datasets:
        labels = {}
        with tqdm(total=len(ds), desc='check %s' % layout, unit='img', file=sys.stderr,
                  disable=not progress, dynamic_ncols=True) as bar:
            for i in range(len(ds)):
                try:
                    labels[i] = ds[i][1]
                except (FaceDataError, OSError) as e:
                    error(e)
                bar.update()
        report['layouts'][layout] = len(ds)
        if count is not None and count != len(ds):
            error(FaceDataError(os.path.join(data_dir, 'property'), 'line 2 says %d images, %s '
                                'holds %d' % (count, layout, len(ds)), line=2))
        seen = set(labels.values())
        if len(labels) == len(ds) and len(seen) != num_classes:
            report['warnings'].append('%s: %d of the %d classes of property have images'
                                      % (layout, len(seen), num_classes))
        if layout == 'train.rec':
            _check_index(ds.reader, error)
            if ds.identity_ranges is not None:
                _check_ranges(ds, labels, error)
    for name in list_val_targets(data_dir):
        try:
            _, issame = load_bin(os.path.join(data_dir, name + '.bin'), image_size)
            report['bins'][name] = len(issame)
        except FaceDataError as e:
            error(e)
            report['bins'][name] = None
    return report


def _check_index(reader, error):
    """Every ``.idx`` offset must start a record of the ``.rec``, and every record be indexed."""
    try:
        starts = [offset for offset, _ in scan_records(reader.rec_path)]
    except FaceDataError as e:
        error(e)
        return
    start_set, by_offset = set(starts), {}
    for key, offset in reader.index.items():
        if offset not in start_set:
            error(FaceDataError(reader.idx_path, 'key %d points at byte %d, which is not the start '
                                'of a record of %s' % (key, offset, reader.rec_path)))
        elif offset in by_offset:
            error(FaceDataError(reader.idx_path, 'keys %d and %d both point at byte %d'
                                % (by_offset[offset], key, offset)))
        by_offset.setdefault(offset, key)
    missing = start_set.difference(by_offset)
    if missing:
        error(FaceDataError(reader.idx_path, '%d record(s) of %s are not in the index, e.g. the '
                            'one at byte %d (rebuild it: prepare_data.py index)'
                            % (len(missing), reader.rec_path, min(missing))))


def _check_ranges(ds, labels, error):
    """Each identity record's key range [start, end) must hold exactly that class's images."""
    key_label = {ds.keys[i]: lab for i, lab in labels.items()}
    for class_id, (lo, hi) in sorted(ds.identity_ranges.items()):
        wrong = [k for k in range(lo, hi) if k in key_label and key_label[k] != class_id]
        if wrong:
            error(FaceDataError(ds.rec_path, 'identity record of class %d gives keys [%d, %d), '
                                'but key %d has label %d' % (class_id, lo, hi, wrong[0],
                                                             key_label[wrong[0]])))


def format_check_report(report):
    """Human-readable lines for the dict ``check_dataset`` returns."""
    lines = ['%s: %s' % (report['data_dir'], 'OK' if not report['num_errors'] else
                         '%d problem(s)' % report['num_errors'])]
    if report['num_classes'] is not None:
        lines.append('property: %d classes, %dx%d' % (report['num_classes'],
                                                       *report['image_size']))
    for layout, n in report['layouts'].items():
        lines.append('%s: %s' % (layout, 'unreadable' if n is None else '%d images' % n))
    for name, n in report['bins'].items():
        lines.append('%s.bin: %s' % (name, 'unreadable' if n is None else '%d pairs' % n))
    lines.extend('warning: %s' % w for w in report['warnings'])
    lines.extend('error: %s' % e for e in report['errors'])
    if report['num_errors'] > len(report['errors']):
        lines.append('... %d more error(s)' % (report['num_errors'] - len(report['errors'])))
    return '\n'.join(lines)

