"""RecordIO, verification .bin and property: the variants real face datasets ship in.

Fixtures are written both by this package and by MXNet's own RecordIO writer (the C++ dmlc
writer that InsightFace and im2rec use), so the reader is checked against files other tools make.
"""
import os
import pickle
import struct

import cv2
import numpy as onp
import pytest

import mxnet as mx

import gluon_arcface as gaf
from gluon_arcface import recordio
from gluon_arcface.data.binfile import load_bin, read_bin, write_bin
from gluon_arcface.data.images import decode_image
from gluon_arcface.data.datasets import FaceRecordDataset, read_facerec_meta, write_property
from gluon_arcface.runtime.errors import FaceDataError, UnsafePickleError


def face(label, size=16, variant=0):
    """A deterministic RGB image whose red channel encodes the label (lossless with PNG)."""
    img = onp.zeros((size, size, 3), onp.uint8)
    img[:, :, 0] = label * 10 + variant      # R
    img[:, :, 1] = onp.arange(size)[None, :] * 4  # G: a left-to-right ramp (shows flips)
    img[:, :, 2] = 200                         # B
    return img


def encode(rgb, ext='.png'):
    """Encode as the field's tools do: OpenCV, from BGR."""
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf


def mxnet_writer(tmp_path, name='train'):
    rec, idx = str(tmp_path / (name + '.rec')), str(tmp_path / (name + '.idx'))
    return mx.recordio.MXIndexedRecordIO(idx, rec, 'w'), rec


def check_items(ds, expected_labels):
    assert len(ds) == len(expected_labels)
    for i, label in enumerate(expected_labels):
        img, lab = ds[i]
        assert lab == label and isinstance(lab, int)
        arr = img.asnumpy()
        assert arr.dtype == onp.uint8 and arr.shape == (16, 16, 3)
        assert arr[0, 0, 0] == label * 10 + i % 3 and arr[0, 0, 2] == 200  # RGB order kept
        assert arr[0, 15, 1] > arr[0, 0, 1]


LABELS = [0, 0, 0, 1, 1, 2, 2, 2]


def test_insightface_header_written_by_mxnet(tmp_path):
    """Record 0: label [a, b]; keys 1..a-1 images; keys a..b-1 identity ranges (InsightFace)."""
    writer, rec = mxnet_writer(tmp_path)
    a = len(LABELS) + 1
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [a, a + 3], 0, 0), b''))
    for i, label in enumerate(LABELS):
        # InsightFace stores the label as a float (and sometimes as an array, label[0] the id).
        lab = float(label) if i % 2 else [float(label), 7.0]
        writer.write_idx(i + 1, mx.recordio.pack(mx.recordio.IRHeader(0, lab, i + 1, 0),
                                                 encode(face(label, variant=i % 3)).tobytes()))
    for class_id, (lo, hi) in enumerate([(1, 4), (4, 6), (6, 9)]):
        header = mx.recordio.IRHeader(0, [lo, hi], 0, 0)
        writer.write_idx(a + class_id, mx.recordio.pack(header, b''))
    writer.close()
    ds = FaceRecordDataset(rec, num_classes=3, image_size=(16, 16))
    check_items(ds, LABELS)
    assert ds.keys == list(range(1, a))
    assert ds.identity_ranges == {0: (1, 4), 1: (4, 6), 2: (6, 9)}


@pytest.mark.parametrize('array_labels', [False, True])
def test_headerless_im2rec_written_by_mxnet(tmp_path, array_labels):
    """No header record: record 0 is an ordinary image with flag 0 (or an array label)."""
    writer, rec = mxnet_writer(tmp_path)
    for i, label in enumerate(LABELS):
        lab = [float(label), 0.5, 0.25] if array_labels else float(label)
        header = mx.recordio.IRHeader(0, lab, i, 0)
        writer.write_idx(i, mx.recordio.pack_img(header, cv2.cvtColor(
            face(label, variant=i % 3), cv2.COLOR_RGB2BGR), quality=100, img_fmt='.png'))
    writer.close()
    ds = FaceRecordDataset(rec, num_classes=3)
    check_items(ds, LABELS)
    assert ds.identity_ranges is None


@pytest.mark.parametrize('with_header', [True, False])
def test_package_writer_read_by_mxnet(tmp_path, with_header):
    samples = [(label, encode(face(label, variant=i % 3)).tobytes())
               for i, label in enumerate(LABELS)]
    rec = str(tmp_path / 'train.rec')
    recordio.write_face_rec(rec, samples, with_header=with_header)
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / 'train.idx'), rec, 'r')
    first = 1 if with_header else 0
    for i, label in enumerate(LABELS):
        header, img = mx.recordio.unpack_img(reader.read_idx(first + i))  # BGR, like cv2
        assert header.label == label
        assert onp.array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), face(label, variant=i % 3))
    if with_header:
        header, payload = mx.recordio.unpack(reader.read_idx(0))
        assert list(header.label) == [9, 12] and payload == b''
    check_items(FaceRecordDataset(rec), LABELS)


def test_magic_word_inside_a_payload(tmp_path):
    """dmlc splits a payload at each aligned magic word; both directions must reassemble it."""
    magic = struct.pack('<I', recordio.RECORD_MAGIC)
    payloads = [recordio.pack_record(1.0, b'abcd' + magic + b'xyz' + magic + magic + b'12'),
                recordio.pack_record(2.0, magic),
                recordio.pack_record(3.0, b'plain')]
    writer, rec = mxnet_writer(tmp_path)
    for i, p in enumerate(payloads):
        writer.write_idx(i, p)
    writer.close()
    reader = recordio.RecordReader(rec)
    assert [reader.read(i) for i in range(3)] == payloads
    # and the package's writer produces what MXNet's reader reassembles
    ours = str(tmp_path / 'ours.rec')
    with recordio.RecordWriter(ours) as w:
        for i, p in enumerate(payloads):
            w.write(i, p)
    assert open(ours, 'rb').read() == open(rec, 'rb').read()
    mx_reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / 'ours.idx'), ours, 'r')
    assert [mx_reader.read_idx(i) for i in range(3)] == payloads


def test_build_index_recovers_a_lost_idx(tmp_path):
    rec = str(tmp_path / 'train.rec')
    recordio.write_face_rec(rec, [(lab, encode(face(lab)).tobytes()) for lab in LABELS])
    original = open(tmp_path / 'train.idx').read()
    os.remove(tmp_path / 'train.idx')
    with pytest.raises(FaceDataError, match='train.idx.*not found.*build_index'):
        FaceRecordDataset(rec)
    assert recordio.build_index(rec) == len(LABELS) + 1 + 3
    assert open(tmp_path / 'train.idx').read() == original


def test_writer_is_atomic(tmp_path):
    rec = str(tmp_path / 'train.rec')
    recordio.write_face_rec(rec, [(0, b'old')], with_header=False)
    before = open(rec, 'rb').read()
    with pytest.raises(RuntimeError):
        with recordio.RecordWriter(rec) as w:
            w.write(0, b'new')
            raise RuntimeError('disk full')
    assert open(rec, 'rb').read() == before
    assert sorted(os.listdir(tmp_path)) == ['train.idx', 'train.rec']


# ---------------------------------------------------------------- verification .bin

PAIR_IMAGES = [face(k % 3, variant=k % 2) for k in range(6)]
ISSAME = [True, False, True]


def python2_pickle(images, issame, protocol):
    """The bytes Python 2's pickle writes for (list of str, list of bool)."""
    if protocol == 0:
        out = b'((lp0\n'
        memo = 1
        for b in images:
            out += b'S' + repr(bytes(b))[1:].encode('latin1') + b'\np%d\na' % memo
            memo += 1
        out += b'(lp%d\n' % memo
        for s in issame:
            out += b'I0%d\na' % int(s)  # Python 2 protocol 0 writes bools as I01 / I00
        return out + b'tp%d\n.' % (memo + 1)
    out = b'\x80\x02]q\x00('
    for b in images:
        b = bytes(b)
        out += (b'U' + bytes([len(b)]) if len(b) < 256 else b'T' + struct.pack('<I', len(b))) + b
    out += b'e]q\x01(' + b''.join(b'\x88' if s else b'\x89' for s in issame) + b'e\x86q\x02.'
    return out


def check_bin(path, size=16, exact=True):
    data_list, issame = load_bin(path, image_size=(size, size))
    assert list(issame) == ISSAME and issame.dtype == bool
    orig, flipped = (d.asnumpy() for d in data_list)
    assert orig.shape == flipped.shape == (6, 3, size, size) and orig.dtype == onp.float32
    assert 0.0 <= orig.min() and orig.max() <= 1.0
    onp.testing.assert_allclose(flipped, orig[:, :, :, ::-1])
    if exact:
        expected = onp.stack([img.transpose(2, 0, 1) for img in PAIR_IMAGES]) / 255.0
        onp.testing.assert_allclose(orig, expected, atol=1e-6)  # RGB, scaled to [0, 1]


@pytest.mark.parametrize('protocol', [0, 2])
def test_bin_written_by_python2(tmp_path, protocol):
    blob = python2_pickle([encode(img).tobytes() for img in PAIR_IMAGES], ISSAME, protocol)
    # The hand-made stream is what Python 2 writes: Python 3 reads str items from it.
    loaded = pickle.loads(blob, encoding='latin1')
    assert isinstance(loaded[0][0], str) and loaded[1] == ISSAME
    path = tmp_path / 'lfw.bin'
    path.write_bytes(blob)
    check_bin(path)


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_bin_with_bytes(tmp_path, protocol):
    path = tmp_path / 'lfw.bin'
    with open(path, 'wb') as f:
        pickle.dump(([encode(img).tobytes() for img in PAIR_IMAGES], ISSAME), f, protocol=protocol)
    check_bin(path)


@pytest.mark.parametrize('shape', ['(n, 1)', '(n,)'])
def test_bin_with_numpy_arrays(tmp_path, shape):
    # cv2.imencode returns uint8 arrays: (n, 1) in OpenCV 3 and early 4.x, (n,) in recent 4.x.
    bins = [encode(img).reshape(-1, 1) if shape == '(n, 1)' else encode(img).ravel()
            for img in PAIR_IMAGES]
    path = tmp_path / 'cfp_fp.bin'
    with open(path, 'wb') as f:
        pickle.dump((bins, onp.array(ISSAME)), f, protocol=4)
    check_bin(path)


def test_bin_resized_and_jpeg(tmp_path):
    path = tmp_path / 'agedb_30.bin'
    write_bin(path, [encode(cv2.resize(img, (24, 24)), '.jpg').tobytes() for img in PAIR_IMAGES],
              ISSAME)
    check_bin(path, size=16, exact=False)
    check_bin(path, size=32, exact=False)
    big = load_bin(path, image_size=(32, 32))[0][0].asnumpy()
    # red channel of pair images 0 and 1 (labels 0 and 1): 0 and 10/255, within JPEG error
    assert abs(big[0, 0].mean() - 0.0) < 0.03 and abs(big[1, 0].mean() - 11 / 255) < 0.03


class RunsCode:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_pickle_running_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'evil.bin'
    with open(path, 'wb') as f:
        pickle.dump(([b'x', RunsCode()], [True]), f)
    with pytest.raises(UnsafePickleError, match=r'evil\.bin.*posix\.system|evil\.bin.*os\.system'):
        read_bin(path)
    assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('payload', [
    ({'a': 1}, 'expected a pickled pair'),
    (([b'1', b'2', b'3'], [True]), 'odd number of images'),
    (([b'1', b'2', b'3', b'4'], [True]), '4 images but 1 pairs'),
    (([1.5, b'2'], [True]), r'record 0: expected an encoded image'),
])
def test_bin_shape_errors(tmp_path, payload):
    obj, message = payload
    path = tmp_path / 'bad.bin'
    with open(path, 'wb') as f:
        pickle.dump(obj, f)
    with pytest.raises(FaceDataError, match=message) as err:
        read_bin(path)
    assert 'bad.bin' in str(err.value)


def test_undecodable_image_names_the_record(tmp_path):
    path = tmp_path / 'bad.bin'
    write_bin(path, [encode(PAIR_IMAGES[0]).tobytes(), b'not an image'], [True])
    with pytest.raises(FaceDataError, match=r'bad\.bin: record 1: image does not decode'):
        load_bin(path, (16, 16))


def test_decode_matches_mxnet_imdecode():
    buf = encode(face(3), '.jpg').tobytes()
    onp.testing.assert_array_equal(decode_image(buf), mx.image.imdecode(buf).asnumpy())


# ---------------------------------------------------------------- property

def test_read_facerec_meta(tmp_path):
    (tmp_path / 'property').write_text('300,112,112\n15000\n')
    assert read_facerec_meta(tmp_path) == ((112, 112), 300)
    write_property(tmp_path, 10, (96, 80))
    assert gaf.read_facerec_meta(tmp_path) == ((96, 80), 10)


@pytest.mark.parametrize('text', ['', '300,112\n', 'abc,1,2\n', '0,112,112\n', '\xff\xfe'])
def test_malformed_property(tmp_path, text):
    (tmp_path / 'property').write_bytes(text.encode('latin1'))
    with pytest.raises(FaceDataError, match='property.*num_classes,height,width'):
        read_facerec_meta(tmp_path)


def test_missing_property(tmp_path):
    with pytest.raises(FaceDataError, match='property file not found'):
        read_facerec_meta(tmp_path)
