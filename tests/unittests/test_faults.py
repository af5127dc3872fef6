"""Faults and bad input (issue 7): each fault gives the package's own error, naming the file, the
record (RecordIO key / .bin image index) or line, and what was expected; nothing a user has is
lost; untrusted files (pickles, archives, checkpoints) run no code; Ctrl-C and --resume work
from the command line.

The faults of the table in docs/faults.md are the parametrised cases below (and the
tests referenced there from test_data_formats.py, test_datasets.py, test_hub.py and
test_training.py).
"""
import io
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile

import cv2
import numpy as onp
import pytest

from mxnet import gluon

import gluon_arcface as gaf
from gluon_arcface import checkpoint as ckpt
from gluon_arcface import hub, recordio
from gluon_arcface.data.binfile import load_bin, read_bin, write_bin
from gluon_arcface.data.datasets import FaceRecordDataset, load_data_face_rec, read_facerec_meta
from gluon_arcface.runtime.errors import (CheckpointError, FaceDataError, GluonArcFaceError,
                                  ImageDecodeError, UnsafePickleError)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 8
LABELS = [0, 0, 0, 1, 1, 2, 2, 2]  # keys 1..8 in the InsightFace layout, identities keys 9..11
MAGIC = struct.pack('<I', recordio.RECORD_MAGIC)


def png(label, i=0, size=SIZE):
    rgb = onp.full((size, size, 3), 20 * label, onp.uint8)
    rgb[:, :, 1] = i
    return cv2.imencode('.png', rgb)[1].tobytes()


def write_rec(folder, labels=LABELS, with_header=True, images=None, num_classes=3):
    """train.rec/.idx + property in ``folder``; returns the .rec path."""
    images = images or [png(lab, i) for i, lab in enumerate(labels)]
    rec = str(folder / 'train.rec')
    recordio.write_face_rec(rec, zip(labels, images), with_header=with_header)
    gaf.write_property(str(folder), num_classes, (SIZE, SIZE))
    return rec


def raw_record(payload, cflag=0, length=None):
    """One dmlc record as bytes: magic, cflag << 29 | length, payload, padding."""
    length = len(payload) if length is None else length
    return (MAGIC + struct.pack('<I', (cflag << 29) | length) + payload +
            b'\0' * (-len(payload) % 4))


def write_raw(folder, records, keys=None):
    """A .rec of raw records and the matching .idx; returns (rec path, offsets)."""
    rec, offsets, offset = folder / 'raw.rec', [], 0
    for r in records:
        offsets.append(offset)
        offset += len(r)
    rec.write_bytes(b''.join(records))
    keys = range(len(records)) if keys is None else keys
    (folder / 'raw.idx').write_text(''.join('%d\t%d\n' % (k, o) for k, o in zip(keys, offsets)))
    return str(rec), offsets


def read_everything(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def pread_guard(monkeypatch):
    """Fail if the reader ever asks for more bytes than the .rec holds (a corrupt length field
    must not make it allocate absurd amounts of memory)."""
    real, sizes = os.pread, []

    def pread(fd, n, offset):
        sizes.append(n)
        assert n <= os.fstat(fd).st_size, 'read of %d bytes from a smaller file' % n
        return real(fd, n, offset)

    monkeypatch.setattr(os, 'pread', pread)
    return sizes


# ------------------------------------------------------------------------------ RecordIO files

def test_rec_truncated_in_its_last_record_is_reported_on_opening(tmp_path, pread_guard):
    rec = write_rec(tmp_path)
    data = open(rec, 'rb').read()
    open(rec, 'wb').write(data[:-6])  # the last identity record (key 11) loses its end
    with pytest.raises(FaceDataError, match=r'train\.rec: record 11: record part at byte \d+ '
                                            r'announces 32 bytes but the file ends .*truncated'):
        FaceRecordDataset(rec)


def test_rec_truncated_mid_file_names_the_idx_line(tmp_path):
    rec = write_rec(tmp_path)
    data = open(rec, 'rb').read()
    offsets = recordio.read_index(str(tmp_path / 'train.idx'))
    open(rec, 'wb').write(data[:offsets[5] + 10])  # cut inside key 5's record
    with pytest.raises(FaceDataError, match=r'train\.idx: line 7: offset \d+ of key 6 is past the '
                                            r'end of the \.rec .*truncated'):
        FaceRecordDataset(rec)


def test_corrupt_magic_names_the_record_and_what_was_expected(tmp_path):
    rec = write_rec(tmp_path)
    offset = recordio.read_index(str(tmp_path / 'train.idx'))[4]
    with open(rec, 'r+b') as f:
        f.seek(offset)
        f.write(b'JUNK')
    ds = FaceRecordDataset(rec, num_classes=3)
    assert ds[0][1] == 0  # other records still read
    with pytest.raises(FaceDataError, match=r'train\.rec: record 4: expected the RecordIO magic '
                                            r'0xced7230a at byte %d, found 0x4b4e554a' % offset):
        ds[3]


def test_idx_of_another_rec_does_not_match(tmp_path):
    """Same keys, different offsets: the .idx belongs to another .rec."""
    rec = write_rec(tmp_path)
    other = tmp_path / 'other'
    other.mkdir()
    write_rec(other, images=[png(lab, i, size=12) for i, lab in enumerate(LABELS)])
    os.replace(other / 'train.idx', tmp_path / 'train.idx')
    with pytest.raises(FaceDataError, match=r'train\.(idx|rec).*(past the end|magic|does not '
                                            r'list every record)'):
        read_everything(FaceRecordDataset(rec))


def test_idx_that_misses_the_last_records(tmp_path):
    rec = write_rec(tmp_path)
    idx = tmp_path / 'train.idx'
    lines = idx.read_text().splitlines(True)
    idx.write_text(''.join(lines[:-2]))
    with pytest.raises(FaceDataError, match=r'train\.idx: the last indexed record \(key 9\) ends '
                                            r'at byte \d+ but .*train\.rec has \d+ bytes: the '
                                            r'index does not list every record .*build_index'):
        FaceRecordDataset(rec)
    # On purpose, a subset index is accepted; rebuilding the index repairs the file.
    assert len(FaceRecordDataset(rec, partial_index=True)) == 8
    recordio.build_index(rec)
    assert len(FaceRecordDataset(rec)) == 8


def test_missing_idx(tmp_path):
    """(also test_data_formats.py::test_build_index_recovers_a_lost_idx)"""
    write_rec(tmp_path)
    os.remove(tmp_path / 'train.idx')
    with pytest.raises(FaceDataError, match=r'train\.idx: index file not found.*key<TAB>offset'):
        load_data_face_rec(str(tmp_path), [], 4)


@pytest.mark.parametrize('line, message', [
    ('3\tabc', 'expected "key<TAB>offset"'),
    ('3', 'expected "key<TAB>offset"'),
    ('3\t5', 'the offset a multiple of 4'),
    ('-1\t0', 'two non-negative integers'),
    ('1\t0\t7', 'expected "key<TAB>offset"'),
    ('\xff\xfe\t0', 'expected "key<TAB>offset"'),
    ('2\t0', 'key 2 appears twice'),
    ('99\t99999996', 'offset 99999996 of key 99 is past the end'),
])
def test_idx_garbage_names_the_line(tmp_path, line, message):
    rec = write_rec(tmp_path)
    idx = tmp_path / 'train.idx'
    lines = idx.read_text().splitlines(True)
    lines.insert(5, line + '\n')
    idx.write_bytes(''.join(lines).encode('latin1'))
    with pytest.raises(FaceDataError) as err:
        FaceRecordDataset(rec)
    assert err.value.path == str(idx) and err.value.line == 6
    assert message in str(err.value) and 'train.idx: line 6: ' in str(err.value)


def test_unreadable_idx_is_a_data_error(tmp_path):
    rec = write_rec(tmp_path)
    os.remove(tmp_path / 'train.idx')
    (tmp_path / 'train.idx').mkdir()
    with pytest.raises(FaceDataError, match=r'train\.idx: cannot read the index file'):
        FaceRecordDataset(rec)


def test_length_field_past_the_end_does_not_allocate(tmp_path, pread_guard):
    """A record in the middle whose length word says 500 MB: an error, not a 500 MB read."""
    payload = recordio.pack_record(0.0, png(0))
    records = [raw_record(payload) for _ in range(3)]
    records[1] = raw_record(payload, length=(1 << 29) - 1)[:len(records[1])]
    rec, _ = write_raw(tmp_path, records)
    reader = recordio.RecordReader(rec)
    assert reader.read(2) == payload
    with pytest.raises(FaceDataError, match=r'raw\.rec: record 1: record part at byte \d+ '
                                            r'announces 536870911 bytes but the file ends'):
        reader.read(1)
    with pytest.raises(FaceDataError, match=r'raw\.rec: record 1: .*announces 536870911 bytes'):
        list(recordio.scan_records(rec))
    assert max(pread_guard) < 1000


@pytest.mark.parametrize('flags, bad', [
    ([2, 3], 'unexpected continuation flag 2 at byte 0 \\(expected 0 \\(whole record\\) or 1'),
    ([3], 'unexpected continuation flag 3 at byte 0'),
    ([1, 0], 'unexpected continuation flag 0 at byte \\d+ \\(expected 2 \\(middle part\\) or 3'),
    ([1, 1, 3], 'unexpected continuation flag 1 at byte \\d+'),
    ([5], 'unexpected continuation flag 5 at byte 0'),
])
def test_continuation_flags_out_of_order(tmp_path, flags, bad):
    parts = b''.join(raw_record(b'abcd', cflag=c) for c in flags)
    good = raw_record(recordio.pack_record(1.0, b'img'))
    rec = tmp_path / 'raw.rec'
    rec.write_bytes(parts + good)
    (tmp_path / 'raw.idx').write_text('0\t0\n1\t%d\n' % len(parts))
    reader = recordio.RecordReader(str(rec))
    with pytest.raises(FaceDataError, match=r'raw\.rec: record 0: ' + bad):
        reader.read(0)
    with pytest.raises(FaceDataError, match=r'raw\.rec: record 0: ' + bad):
        recordio.build_index(str(rec), str(tmp_path / 'rebuilt.idx'))
    assert not (tmp_path / 'rebuilt.idx').exists()  # nothing half-written


def header_rec(folder, header_label, identity_labels=None, with_image=False):
    """An InsightFace-style .rec whose header record 0 has ``header_label``."""
    records = [raw_record(recordio.pack_record(header_label))]
    records += [raw_record(recordio.pack_record(float(lab), png(lab, i)))
                for i, lab in enumerate(LABELS)]
    for lab in identity_labels or []:
        records.append(raw_record(recordio.pack_record(lab)))
    rec, _ = write_raw(folder, records)
    return rec


@pytest.mark.parametrize('label, message', [
    ([9.0], r'header record has 1 label value\(s\), expected \[first identity key, end key\]'),
    ([float('nan'), 12.0], r'header record label \[first identity key, end key\]: expected '
                           r'non-negative integer key numbers, got \[nan, 12\.0\]'),
    ([9.5, 12.0], r'header record .*expected non-negative integer key numbers, got \[9\.5, '
                  r'12\.0\]'),
    ([float('inf'), 12.0], r'header record .*expected non-negative integer key numbers'),
    ([-3.0, 12.0], r'header record .*expected non-negative integer key numbers'),
    ([9.0, 5.0], r'header record label \[9, 5\] is not a valid .*1 <= first <= end'),
    ([0.0, 5.0], r'header record label \[0, 5\] is not a valid'),
    ([9.0, 4e9], r'header record announces \d+ identity records .*only 9 records'),
])
def test_malformed_header_record(tmp_path, label, message):
    rec = header_rec(tmp_path, label)
    with pytest.raises(FaceDataError, match=r'raw\.rec: record 0: ' + message):
        FaceRecordDataset(rec)


def test_header_pointing_at_missing_keys(tmp_path):
    rec = header_rec(tmp_path, [20.0, 23.0])
    with pytest.raises(FaceDataError, match=r'raw\.idx: header record says images are keys '
                                            r'1\.\.19 but key 19 is not in the index'):
        FaceRecordDataset(rec)


@pytest.mark.parametrize('identity, message', [
    ([float('nan'), 4.0], r'record 9: identity record label \[first image key, end key\]: '
                          r'expected non-negative integer key numbers, got \[nan, 4\.0\]'),
    ([4.0, 1.0], r'record 9: identity record of class 0 gives the key range \[4, 1\), expected '
                 r'start <= end'),
])
def test_malformed_identity_record(tmp_path, identity, message):
    rec = header_rec(tmp_path, [9.0, 10.0], identity_labels=[identity])
    with pytest.raises(FaceDataError, match=r'raw\.rec: ' + message):
        FaceRecordDataset(rec)


@pytest.mark.parametrize('label, message', [
    (float('nan'), r'expected an integer class id as label \(or as label\[0\]\), got nan'),
    (1.5, r'expected an integer class id as label .*got 1\.5'),
    (float('inf'), r'expected an integer class id'),
    ([float('nan'), 0.0], r'expected an integer class id .*got \[nan, 0\.0\]'),
    (-1.0, r'label -1 is outside \[0, 3\) given by property'),
    (3.0, r'label 3 is outside \[0, 3\) given by property'),
])
def test_bad_labels_name_the_record(tmp_path, label, message):
    records = [raw_record(recordio.pack_record(float(lab), png(lab, i)))
               for i, lab in enumerate(LABELS)]
    records[4] = raw_record(recordio.pack_record(label, png(1)))
    rec, _ = write_raw(tmp_path, records)
    ds = FaceRecordDataset(rec, num_classes=3)
    with pytest.raises(FaceDataError, match=r'raw\.rec: record 4: ' + message):
        ds[4]
    with pytest.raises(FaceDataError, match=r'record 4: '):
        ds.label_of(4)


def test_identity_folder_outside_num_classes(tmp_path):
    for name in ('00000000', '00000007'):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'a.png').write_bytes(png(0))
    gaf.write_property(str(tmp_path), 3, (SIZE, SIZE))
    with pytest.raises(FaceDataError, match=r'00000007: label 7 is outside \[0, 3\) given by '
                                            r'property'):
        load_data_face_rec(str(tmp_path), [], 1)


def test_negative_label_refused_even_without_property(tmp_path):
    records = [raw_record(recordio.pack_record(-2.0, png(0)))]
    rec, _ = write_raw(tmp_path, records)
    with pytest.raises(FaceDataError, match=r'raw\.rec: record 0: label -2 is negative, '
                                            r'expected a class id >= 0'):
        FaceRecordDataset(rec)[0]


def test_payload_shorter_than_its_header(tmp_path):
    rec, _ = write_raw(tmp_path, [raw_record(b'short'),
                                  raw_record(struct.pack('<IfQQ', 1000, 0.0, 0, 0) + b'ab')])
    reader = recordio.RecordReader(rec)
    with pytest.raises(FaceDataError, match=r'record 0: payload of 5 bytes is shorter than the '
                                            r'24-byte image header'):
        reader.read_header(0)
    with pytest.raises(FaceDataError, match=r'record 1: header announces 1000 float32 labels but '
                                            r'only 2 bytes follow'):
        reader.read_header(1)


def test_image_of_another_size_than_property(tmp_path):
    """(also test_datasets.py::test_image_size_checked_against_property)"""
    images = [png(lab, i) for i, lab in enumerate(LABELS)]
    images[2] = png(0, size=12)
    write_rec(tmp_path, images=images)
    loader, _ = load_data_face_rec(str(tmp_path), [], 8, shuffle=False, num_workers=0)
    with pytest.raises(FaceDataError, match=r'train\.rec: record 3: image is 12x12, property says '
                                            r'8x8 \(HxW\)'):
        next(iter(loader))


@pytest.mark.parametrize('what', ['empty rec', 'header only', 'empty folder'])
def test_empty_dataset(tmp_path, what):
    if what == 'empty rec':
        (tmp_path / 'train.rec').write_bytes(b'')
        (tmp_path / 'train.idx').write_text('')
    elif what == 'header only':
        recordio.write_face_rec(str(tmp_path / 'train.rec'), [])
    gaf.write_property(str(tmp_path), 3, (SIZE, SIZE))
    with pytest.raises(FaceDataError, match='no training images: expected train.rec'):
        load_data_face_rec(str(tmp_path), [], 4)


def test_fewer_images_than_one_batch_per_worker(tmp_path):
    """(also test_datasets.py::test_fewer_images_than_a_batch)"""
    write_rec(tmp_path)
    with pytest.raises(FaceDataError, match=r'train\.rec: 3 training images for worker 1 of 3, '
                                            r'fewer than one batch of 4'):
        load_data_face_rec(str(tmp_path), [], 4, num_parts=3, part_index=1)


@pytest.mark.parametrize('content', [b'\xef\xbb\xbf3,8,8\n', b'3,8,8\r\n', b'3, 8, 8\n8\n'])
def test_property_variants_that_are_fine(tmp_path, content):
    (tmp_path / 'property').write_bytes(content)
    assert read_facerec_meta(tmp_path) == ((8, 8), 3)


@pytest.mark.parametrize('content', [b'3,8\n', b'3,8,8,3\n', b'-3,8,8\n', b'3.5,8,8\n',
                                     b'\n3,8,8\n', b'\x00\x01\x02'])
def test_property_malformed(tmp_path, content):
    """(also test_data_formats.py::test_malformed_property / test_missing_property)"""
    (tmp_path / 'property').write_bytes(content)
    with pytest.raises(FaceDataError, match=r'property: line 1: expected "num_classes,height,'
                                            r'width" with positive integers'):
        read_facerec_meta(tmp_path)


def test_property_is_a_folder(tmp_path):
    (tmp_path / 'property').mkdir()
    with pytest.raises(FaceDataError, match=r'property: cannot read the property file'):
        read_facerec_meta(tmp_path)


# ------------------------------------------------------------ undecodable images, skip_bad

def rec_with_bad_images(folder, bad=(3, 6)):
    """A headerless .rec of 16 images, those at ``bad`` replaced by bytes that do not decode."""
    labels = [i % 3 for i in range(16)]
    images = [png(lab, i) for i, lab in enumerate(labels)]
    for i in bad:
        images[i] = images[i][:30]  # a truncated PNG
    recordio.write_face_rec(str(folder / 'train.rec'), sorted(zip(labels, images),
                                                              key=lambda s: s[0]),
                            with_header=False)
    gaf.write_property(str(folder), 3, (SIZE, SIZE))
    return [k for k, (lab, img) in enumerate(sorted(zip(labels, images), key=lambda s: s[0]))
            if len(img) == 30]


@pytest.mark.parametrize('thread_pool', [True, False])
def test_decode_error_in_a_worker_reaches_the_user_intact(tmp_path, thread_pool):
    bad = rec_with_bad_images(tmp_path)
    loader, _ = load_data_face_rec(str(tmp_path), [], 4, num_workers=2, shuffle=False,
                                   thread_pool=thread_pool)
    with pytest.raises(ImageDecodeError) as err:
        list(loader)
    e = err.value
    assert e.path == str(tmp_path / 'train.rec') and e.record == bad[0]
    assert str(e).startswith('%s: record %d: image does not decode (30 bytes starting '
                             % (tmp_path / 'train.rec', bad[0]))
    assert isinstance(e, FaceDataError) and e.reason.endswith('expected a JPEG, PNG or BMP')


@pytest.mark.parametrize('thread_pool', [True, False])
def test_skip_bad_reports_what_workers_skipped(tmp_path, thread_pool):
    bad = rec_with_bad_images(tmp_path)
    loader, _ = load_data_face_rec(str(tmp_path), [], 4, num_workers=2, shuffle=False,
                                   thread_pool=thread_pool, skip_bad=True)
    assert loader.skipped == []
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == 16  # each bad image replaced by the next good one
    skipped = loader.skipped
    assert [s.record for s in skipped] == bad
    assert all(s.path == str(tmp_path / 'train.rec') and 'does not decode' in s.reason
               for s in skipped)
    assert isinstance(skipped[0], gaf.datasets.SkippedImage)
    list(loader)  # a second epoch does not count them twice
    assert [s.record for s in loader.skipped] == bad


def test_skip_bad_with_nothing_decodable(tmp_path):
    recordio.write_face_rec(str(tmp_path / 'train.rec'), [(0, b'junk'), (0, b'more junk')],
                            with_header=False)
    ds = FaceRecordDataset(str(tmp_path / 'train.rec'), skip_bad=True)
    with pytest.raises(FaceDataError, match=r'train\.rec: none of the 2 images decodes'):
        ds[0]
    assert [s.record for s in ds.skipped] == [0, 1]


def test_skip_bad_is_off_by_default_for_folders(tmp_path):
    """(also test_datasets.py::test_skip_bad_images_is_opt_in_and_counted)"""
    (tmp_path / '00000000').mkdir()
    (tmp_path / '00000000' / 'a.png').write_bytes(png(0))
    (tmp_path / '00000000' / 'b.jpg').write_bytes(b'\xff\xd8\xff\xe0 cut short')
    ds = gaf.FaceFolderDataset(str(tmp_path))
    with pytest.raises(ImageDecodeError, match=r'00000000/b\.jpg: image does not decode'):
        ds[1]
    lenient = gaf.FaceFolderDataset(str(tmp_path), skip_bad=True)
    assert lenient[1][1] == 0 and lenient.skipped[0].path.endswith('b.jpg')
    assert lenient.skipped[0].record is None


def test_unreadable_image_file_is_a_data_error(tmp_path):
    (tmp_path / '00000000').mkdir()
    (tmp_path / '00000000' / 'a.png').mkdir()  # a folder where an image should be
    with pytest.raises(FaceDataError, match=r'a\.png: cannot read the image file'):
        gaf.FaceFolderDataset(str(tmp_path))[0]


@pytest.mark.parametrize('header', [
    b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01\x00\x00\x00\x01\x00\x00\x08\x02\x00\x00\x00',
    b'\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01',
    b'BM' + b'\0' * 12 + struct.pack('<Iii', 40, 100000, -100000),
])
def test_image_declaring_a_huge_size_is_refused_before_decoding(header):
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match=r'record 7: image declares \d+x\d+ pixels'):
            gaf.decode_image(header + b'\0' * 64, 'x.rec', 7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_other_image_formats_are_refused():
    tiff = cv2.imencode('.tiff', onp.zeros((4, 4, 3), onp.uint8))[1].tobytes()
    with pytest.raises(ImageDecodeError, match=r"are not a JPEG, PNG or BMP"):
        gaf.decode_image(tiff, 'x.bin', 0)


# ----------------------------------------------------------------------- verification .bin

PAIRS = [png(k % 3, k) for k in range(4)]


def test_bin_truncated(tmp_path):
    path = tmp_path / 'lfw.bin'
    write_bin(path, PAIRS, [True, False])
    data = path.read_bytes()
    for cut in (1, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(FaceDataError, match=r'lfw\.bin: not a readable verification \.bin'):
            load_bin(path, (SIZE, SIZE))


@pytest.mark.parametrize('obj, message', [
    ((PAIRS[:3], [True]), r'odd number of images \(3\)'),
    ((PAIRS, [True, 2]), r'issame_list\[1\] is 2, expected True/False'),
    ((PAIRS, [True, 'yes']), r'issame_list\[1\] is str'),
    ((PAIRS, onp.array([0.5, 1.0])), r'expected issame_list to be a list of booleans'),
    ((PAIRS, onp.array([[True, False]])), r'expected issame_list to be a list of booleans'),
    ((PAIRS[:2] + [onp.zeros((3, 4), onp.uint8), PAIRS[3]], [True, True]),
     r'record 2: expected an encoded image .*uint8 array of shape \(3, 4\)'),
    ([PAIRS, [True, False], None], r'expected a pickled pair'),
])
def test_bin_malformed_contents(tmp_path, obj, message):
    """(also test_data_formats.py::test_bin_shape_errors)"""
    path = tmp_path / 'cfp_fp.bin'
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(FaceDataError, match=r'cfp_fp\.bin: (record \d+: )?' + message):
        load_bin(path, (SIZE, SIZE))


def test_bin_undecodable_image_names_its_index(tmp_path):
    path = tmp_path / 'lfw.bin'
    write_bin(path, PAIRS[:3] + [b'\xff\xd8\xff junk'], [True, False])
    with pytest.raises(ImageDecodeError, match=r'lfw\.bin: record 3: image does not decode'):
        load_bin(path, (SIZE, SIZE))


def test_bin_too_large_for_memory(tmp_path):
    path = tmp_path / 'lfw.bin'
    write_bin(path, PAIRS, [True, False])
    with pytest.raises(FaceDataError, match=r'4 images at 1000000x1000000 need .* GB as float32 '
                                            r'.*only .* GB of memory is available'):
        load_bin(path, (10 ** 6, 10 ** 6))


# ------------------------------------------------------ untrusted pickles: nothing runs

class ReducesTo:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class ReduceEx:
    def __reduce_ex__(self, protocol):
        return eval, ('__import__("os").system("touch pwned")',)


def dump_pair(evil, protocol=4):
    return pickle.dumps(([PAIRS[0], evil], [True]), protocol=protocol)


@pytest.mark.parametrize('blob, refused', [
    (dump_pair(ReducesTo(eval, 'open("pwned", "w")')), 'builtins.eval'),
    (dump_pair(ReducesTo(exec, 'open("pwned", "w")'), protocol=2), '__builtin__.exec'),
    (dump_pair(ReduceEx()), 'builtins.eval'),
    (dump_pair(ReducesTo(os.system, 'touch pwned')), r'(posix|os)\.system'),
    (dump_pair(ReducesTo(subprocess.call, ['touch', 'pwned'])), 'subprocess.call'),
    (b'c__builtin__\neval\n(S\'open("pwned", "w")\'\ntR.', '__builtin__.eval'),
    (dump_pair(ReducesTo(onp.save, 'pwned', onp.zeros(1))), r'numpy\.save'),
    (dump_pair(ReducesTo(onp.fromfile, '/etc/passwd')), r'numpy\..*fromfile'),
    (dump_pair(ReducesTo(onp.load, 'x.npy', None, True)), r'numpy\..*load'),
    (dump_pair(onp.array([PAIRS[0], ReducesTo(eval, '1')], dtype=object)), 'dtype object'),
    (dump_pair(onp.array([PAIRS[0], PAIRS[1]], dtype=object)),
     'numpy array of dtype object'),
    (dump_pair(onp.zeros(3, dtype=[('a', 'u1'), ('b', 'O')])), r'numpy array of dtype \|V9'),
    (dump_pair(gaf.TrainBlock), r'gluon_arcface\.nn\.model\.TrainBlock'),
    (b'\x80\x02]q\x00(P0\nP1\ne]q\x01\x88a\x86q\x02.', 'opcode PERSID'),
    (b'\x80\x02\x82\x01]q\x00\x86.', 'EXT1'),
    # BUILD on an allowed global would change it for every later load
    (b'\x80\x02c_codecs\nencode\nN}X\x01\x00\x00\x00xK\x01s\x86b.', 'modify _codecs.encode'),
    (b'\x80\x02cnumpy\nndarray\n)R.', 'call numpy.ndarray'),
])
def test_untrusted_pickle_runs_no_code(tmp_path, monkeypatch, blob, refused):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'evil.bin'
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError, match=r'evil\.bin: refusing .*' + refused):
        load_bin(path, (SIZE, SIZE))
    assert os.listdir(tmp_path) == ['evil.bin']  # nothing was written


def memory_bombs():
    """Small pickles that would make a naive loader allocate gigabytes."""
    def binbytes8(n):  # "here come n bytes" ... that are not there
        return b'\x80\x04\x8e' + struct.pack('<Q', n) + b'x' * 16 + b'.'

    def long_binput(index):  # memo slot 2**31: CPython would size its memo table to match
        return b'\x80\x02]r' + struct.pack('<I', index) + b'.'

    def reduce_call(module, name, args_pickle):
        return b'\x80\x02c' + module + b'\n' + name + b'\n' + args_pickle + b'R.'

    array = pickle.dumps(onp.zeros(4, onp.uint8), protocol=2)
    huge_shape = array.replace(b'K\x04\x85', b'J\x00\x00\x00\x40\x85', 1)  # 1 GiB of uint8
    assert huge_shape != array
    return [
        (binbytes8(1 << 33), r'expected 8589934592 bytes in a bytes8, but only 17 remain'),
        (long_binput(1 << 31), r'pickle memo index 2147483648 at byte 3 is out of range'),
        (b'\x80\x04\x95' + struct.pack('<Q', 1 << 33) + b'N.', r'frame of 8589934592 bytes'),
        (reduce_call(b'__builtin__', b'bytearray', b'J\x00\x00\x00\x40\x85'),
         r'refusing bytearray\(int\)'),
        (reduce_call(b'builtins', b'bytes', b'J\x00\x00\x00\x40\x85'), r'refusing bytes\(int\)'),
        (huge_shape, r'numpy array of shape \(1073741824,\) and dtype uint8 needs 1073741824 '
                     r'bytes, the pickle holds 4'),
        (b'(' * 100000 + b'l' * 100000 + b'.', r'expected a pickled pair'),
    ]


@pytest.mark.parametrize('blob, message', memory_bombs())
def test_pickle_memory_bombs_refused_before_allocating(tmp_path, blob, message):
    path = tmp_path / 'bomb.bin'
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(FaceDataError, match=r'bomb\.bin: .*' + message):
            read_bin(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, 'allocated %d bytes' % peak


def test_tampered_dtype_state_is_refused(tmp_path):
    """A uint8 dtype whose pickled state sets the flags of a dtype holding Python objects."""
    blob = pickle.dumps(([onp.frombuffer(PAIRS[0], onp.uint8), PAIRS[1]], [True]), protocol=2)
    tampered = blob.replace(b'J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t',
                            b'J\xff\xff\xff\xffJ\xff\xff\xff\xffK?t')  # flags 0 -> 63
    assert tampered != blob
    path = tmp_path / 'lfw.bin'
    path.write_bytes(tampered)
    with pytest.raises(UnsafePickleError, match=r'lfw\.bin: refusing a numpy array of dtype uint8 '
                                                r'\(flags 63\)'):
        read_bin(path)
    assert onp.dtype('u1').flags == 0  # numpy's own uint8 dtype was not touched


def test_pickled_numpy_arrays_of_every_protocol_still_load(tmp_path):
    bins = [onp.frombuffer(b, onp.uint8).reshape(-1, 1) for b in PAIRS]
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / ('p%d.bin' % protocol)
        path.write_bytes(pickle.dumps((bins, onp.array([True, False])), protocol=protocol))
        images, issame = read_bin(path)
        assert images == PAIRS and list(issame) == [True, False], protocol
        path.write_bytes(pickle.dumps(([bytearray(b) for b in PAIRS], [onp.bool_(True), 0]),
                                      protocol=protocol))
        images, issame = read_bin(path)
        assert images == PAIRS and list(issame) == [True, False], protocol


# ----------------------------------------------------------------------------- archives

def test_corrupt_archive_is_a_data_error(tmp_path):
    """(unsafe members: test_hub.py::test_safe_extract_rejects_escaping_members; a sha1 mismatch
    removes the download: test_hub.py::test_sha1_mismatch_keeps_nothing)"""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as zf:
        zf.writestr('data/property', b'3,8,8\n' * 1000)
    body = bytearray(buf.getvalue())
    body[60:70] = b'\0' * 10  # damage the compressed data
    (tmp_path / 'a.zip').write_bytes(bytes(body))
    with pytest.raises(FaceDataError, match=r'a\.zip: not a readable zip archive'):
        hub.safe_extract(str(tmp_path / 'a.zip'), str(tmp_path / 'out'))
    (tmp_path / 'b.tar.gz').write_bytes(b'\x1f\x8b\x08 not gzip')
    with pytest.raises(FaceDataError, match=r'b\.tar\.gz: not a readable tar archive'):
        hub.safe_extract(str(tmp_path / 'b.tar.gz'), str(tmp_path / 'out2'))


def test_zip_symlink_entry_is_written_as_a_plain_file(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        info = zipfile.ZipInfo('data/link')
        info.external_attr = 0o120777 << 16  # a symlink in the unix mode bits
        zf.writestr(info, '/etc')
    (tmp_path / 'a.zip').write_bytes(buf.getvalue())
    hub.safe_extract(str(tmp_path / 'a.zip'), str(tmp_path / 'out'))
    link = tmp_path / 'out' / 'data' / 'link'
    assert not link.is_symlink() and link.read_text() == '/etc'


def test_tar_member_escaping_through_a_nested_path(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        info = tarfile.TarInfo('data/sub/../../../evil.txt')
        info.size = 1
        tf.addfile(info, io.BytesIO(b'x'))
    (tmp_path / 'a.tar').write_bytes(buf.getvalue())
    with pytest.raises(gaf.UnsafeArchiveError, match=r"a\.tar: member 'data/sub/\.\./\.\./\.\./"
                                                     r"evil\.txt' has a '\.\.' component"):
        hub.safe_extract(str(tmp_path / 'a.tar'), str(tmp_path / 'box' / 'out'))
    assert not (tmp_path / 'evil.txt').exists() and not (tmp_path / 'box').exists()


# -------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope='module')
def saved_checkpoint(tmp_path_factory):
    """A checkpoint folder with epochs 1 and 2 of a small network (built once)."""
    folder = tmp_path_factory.mktemp('checkpoint')
    net = gaf.TrainBlock(18, 8, 3, use_dropout=False)
    from mxnet import autograd, np
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9})
    x, y = np.zeros((2, 3, 16, 16)), np.array([0, 1])
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x, y), y)
    loss.backward()
    trainer.step(2)
    ckpt.save_checkpoint(str(folder), 1, net, trainer)
    ckpt.save_checkpoint(str(folder), 2, net, trainer)
    return folder, net, trainer


@pytest.fixture
def checkpoint(saved_checkpoint, tmp_path):
    """A copy of the saved checkpoint folder that a test may damage: (folder, net, trainer)."""
    folder, net, trainer = saved_checkpoint
    copy = tmp_path / 'checkpoints'
    shutil.copytree(folder, copy)
    return copy, net, trainer


def test_corrupt_checkpoint_files(checkpoint):
    folder, net, trainer = checkpoint
    params, states = folder / 'epoch-0002.params', folder / 'epoch-0002.states'
    good_params, good_states = params.read_bytes(), states.read_bytes()

    params.write_bytes(good_params[:len(good_params) // 2])
    with pytest.raises(CheckpointError, match=r'epoch-0002\.params is unreadable \(truncated or '
                                              r'corrupt\); other checkpoints in the folder: '
                                              r'epoch-0001\.params'):
        ckpt.load_checkpoint(str(folder), net, trainer)
    params.write_bytes(good_params)

    states.write_bytes(good_states[:len(good_states) // 2])
    with pytest.raises(CheckpointError, match=r'epoch-0002\.states is unreadable \(truncated or '
                                              r'corrupt\).*epoch-0001\.states'):
        ckpt.load_checkpoint(str(folder), net, trainer)
    states.write_bytes(good_states)
    assert ckpt.load_checkpoint(str(folder), net, trainer)['epoch'] == 2


def test_checkpoint_states_pickle_runs_no_code(checkpoint, tmp_path, monkeypatch):
    folder, net, trainer = checkpoint
    monkeypatch.chdir(tmp_path)
    states = folder / 'epoch-0002.states'
    states.write_bytes(pickle.dumps(ReducesTo(os.system, 'touch pwned')))
    with pytest.raises(CheckpointError, match=r'epoch-0002\.states: refusing to load '
                                              r'(posix|os)\.system'):
        ckpt.load_checkpoint(str(folder), net, trainer)
    assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('state, message', [
    ('{"epoch": 2, "params": "../../etc/passwd", "states": "x"}', r'"params" is .*expected a '
                                                                   r'file name in the folder'),
    ('{"epoch": "2"}', r'"epoch" is .*expected a non-negative integer'),
    ('{"epoch": 2, "par', r'not a valid checkpoint description'),
    ('[1, 2]', r'no "epoch" field'),
])
def test_malformed_checkpoint_json(tmp_path, state, message):
    (tmp_path / 'checkpoint.json').write_text(state)
    with pytest.raises(CheckpointError, match=r'checkpoint\.json: .*' + message):
        ckpt.latest_checkpoint(str(tmp_path))


# ----------------------------------------------- Ctrl-C and --resume from the command line

def tiny_dataset(folder):
    rng = onp.random.RandomState(0)
    samples = []
    for label in range(4):
        for _ in range(8):
            img = rng.randint(0, 255, (16, 16, 3)).astype(onp.uint8)
            samples.append((label, cv2.imencode('.png', img)[1].tobytes()))
    gaf.write_face_rec(str(folder / 'train.rec'), samples)
    gaf.write_property(str(folder), 4, (16, 16), len(samples))
    gaf.write_bin(str(folder / 'tiny.bin'), [b for _, b in samples[:20]],
                  [i % 2 == 0 for i in range(10)])


def train_cmd(data, out, epochs, *extra):
    return [sys.executable, os.path.join(REPO, 'scripts', 'train.py'), '--data-dir', str(data),
            '--val-targets', 'tiny', '--num-layers', '18', '--emb-size', '16', '--batch-size',
            '8', '--epochs', str(epochs), '--output', str(out), '--ctx', 'cpu',
            '--num-workers', '0', '--seed', '0', '--no-progress', *extra]


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    data, out = tmp_path / 'data', tmp_path / 'run'
    data.mkdir()
    tiny_dataset(data)
    state_file = out / 'checkpoints' / 'checkpoint.json'
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(train_cmd(data, out, 1000), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))
    try:
        deadline = time.time() + 60
        while not state_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, 'no checkpoint after 60 s'
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, stderr = stdout.decode(), stderr.decode()
    assert proc.returncode == 130, stderr
    assert 'interrupted' in stderr and 'Traceback' not in stderr
    state = ckpt.latest_checkpoint(str(out / 'checkpoints'))
    saved = state['epoch']
    assert saved >= 1 and len(state['history']['epochs']) == saved
    assert 'checkpoint saved in' in stdout
    assert not [f for f in os.listdir(out / 'checkpoints') if f.endswith('.tmp')]
    # The checkpoint is usable: a fresh process resumes and trains the next epoch to the end.
    done = subprocess.run(train_cmd(data, out, saved + 1, '--resume'), capture_output=True,
                          env=env, cwd=str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    log = done.stdout.decode()
    assert 'resumed from %s after epoch %d' % (out / 'checkpoints', saved) in log
    assert 'epoch %d/%d' % (saved + 1, saved + 1) in log
    assert ckpt.latest_checkpoint(str(out / 'checkpoints'))['epoch'] == saved + 1
    assert (out / 'metrics.json').exists()


def test_every_error_type_is_the_packages():
    for name in gaf.errors.__all__:
        assert issubclass(getattr(gaf.errors, name), GluonArcFaceError)
    e = pickle.loads(pickle.dumps(ImageDecodeError('a.rec', 'bad', record=3)))
    assert type(e) is ImageDecodeError and str(e) == 'a.rec: record 3: bad' and e.record == 3
