"""Fuzzing the readers of untrusted files (issue 7): the RecordIO reader (.rec + .idx) and the
verification .bin loader, fed mutated copies of valid files, must only ever raise the package's
own errors (GluonArcFaceError subclasses): no other exception, no crash, no hang, and no read
larger than the file.

Hypothesis runs derandomized (the same examples every run, no example database) with a bounded
number of examples; each example also runs under a 10 s alarm, so a reader that loops forever
fails the test instead of hanging it.
"""
import contextlib
import os
import pickle
import signal
import struct

import cv2
import numpy as onp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gluon_arcface import recordio
from gluon_arcface.data.binfile import load_bin, read_bin
from gluon_arcface.data.datasets import FaceRecordDataset
from gluon_arcface.runtime.errors import GluonArcFaceError

FUZZ = settings(max_examples=500, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                print_blob=True)
SIZE = 8
MAGIC = struct.pack('<I', recordio.RECORD_MAGIC)


def image(label, i, ext):
    rgb = onp.zeros((SIZE, SIZE, 3), onp.uint8)
    rgb[:, :, 0], rgb[:, :, 1] = 40 * label, 17 * i
    return cv2.imencode(ext, rgb)[1].tobytes()


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no reader can swallow it."""


@contextlib.contextmanager
def time_limit(seconds):
    def alarm(signum, frame):
        raise Hang('a reader took more than %d s on one example' % seconds)
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope='module', autouse=True)
def reads_capped_by_file_size():
    """No pread may ask for more bytes than the file holds (a corrupt length field must not make
    the reader allocate memory it cannot fill)."""
    real = os.pread

    def pread(fd, n, offset):
        assert n <= os.fstat(fd).st_size, 'read of %d bytes from a smaller file' % n
        return real(fd, n, offset)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, 'pread', pread)
        yield


class Files(dict):
    """The valid files; a short repr keeps Hypothesis' failure reports readable."""

    def __repr__(self):
        return '<valid .rec/.idx/.bin files>'


@pytest.fixture(scope='module')
def valid(tmp_path_factory):
    """Valid files to mutate: an InsightFace-style .rec (with a record holding the magic word,
    so that it is split in parts), a headerless one, and .bin pickles of several kinds."""
    folder = tmp_path_factory.mktemp('valid')
    files = Files()
    labels = [0, 0, 1, 1, 2, 2]
    samples = [(lab, image(lab, i, '.png' if i % 2 else '.jpg')) for i, lab in enumerate(labels)]
    samples[3] = (1, samples[3][1] + MAGIC * 2)  # trailing bytes: still decodes
    for name, header in (('header', True), ('plain', False)):
        rec = str(folder / (name + '.rec'))
        recordio.write_face_rec(rec, samples, with_header=header)
        files[name] = (open(rec, 'rb').read(), open(folder / (name + '.idx'), 'rb').read())
    images = [img for _, img in samples[:4]]
    issame = [True, False]
    arrays = [onp.frombuffer(b, onp.uint8).reshape(-1, 1) for b in images]
    files['bins'] = [pickle.dumps((images, issame), protocol=2),
                     pickle.dumps((arrays, onp.array(issame)), protocol=4),
                     pickle.dumps((arrays, [onp.bool_(s) for s in issame]), protocol=5),
                     python2_pickle(images, issame)]
    # Preconditions: the unmutated files read without error.
    for name in ('header', 'plain'):
        rec, idx = write(folder, 'check', *files[name])
        assert len(read_all(rec, idx)) == 6
    for blob in files['bins']:
        path = folder / 'check.bin'
        path.write_bytes(blob)
        assert list(load_bin(path, (SIZE, SIZE))[1]) == issame
    files['folder'] = tmp_path_factory.mktemp('fuzz')
    return files


def python2_pickle(images, issame):
    """(list of str, list of bool) as Python 2's pickle protocol 0 writes it."""
    out = b'((lp0\n'
    for n, b in enumerate(images, 1):
        out += b'S' + repr(bytes(b))[1:].encode('latin1') + b'\np%d\na' % n
    out += b'(lp%d\n' % (len(images) + 1)
    for s in issame:
        out += b'I0%d\na' % int(s)
    return out + b'tp%d\n.' % (len(images) + 2)


def write(folder, stem, rec_bytes, idx_bytes):
    rec, idx = folder / (stem + '.rec'), folder / (stem + '.idx')
    rec.write_bytes(rec_bytes)
    idx.write_bytes(idx_bytes)
    return str(rec), str(idx)


def read_all(rec, idx, skip_bad=False):
    ds = FaceRecordDataset(rec, idx, num_classes=3, image_size=(SIZE, SIZE), skip_bad=skip_bad)
    out = []
    for i in range(len(ds)):
        out.append(ds[i][1])
        assert ds.label_of(i) in (0, 1, 2)
    return out


def only_package_errors(func, *args, **kwargs):
    """Run ``func``; a GluonArcFaceError is fine (the outcome is an error), anything else fails
    the test. Returns True when ``func`` succeeded."""
    try:
        func(*args, **kwargs)
        return True
    except GluonArcFaceError as e:
        assert str(e).strip() and e.__class__.__module__ == 'gluon_arcface.runtime.errors'
        return False


# -------------------------------------------------------------------------- mutations

def byte_mutation(max_len=4096):
    """One mutation of a byte string, as a tuple that ``mutate`` applies."""
    pos = st.integers(0, max_len)
    return st.one_of(
        st.tuples(st.just('flip'), pos, st.integers(0, 7)),
        st.tuples(st.just('truncate'), pos),
        st.tuples(st.just('insert'), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just('delete'), pos, st.integers(1, 64)),
        # a whole 32-bit word: a length field, a magic word, a label, a count
        st.tuples(st.just('word'), pos, st.sampled_from([0, 1, 2, 3, 0x7FFFFFFF, 0xFFFFFFFF,
                                                         recordio.RECORD_MAGIC, 1 << 29,
                                                         (1 << 29) - 1, (3 << 29) | 8,
                                                         (2 << 29) | 4, 0x7FC00000])
                  | st.integers(0, 0xFFFFFFFF)),
    )


def mutate(data, mutations):
    data = bytearray(data)
    for m in mutations:
        if not data:
            break
        kind, pos = m[0], m[1] % (len(data) + (1 if m[0] in ('truncate', 'insert') else 0))
        if kind == 'flip':
            data[pos] ^= 1 << m[2]
        elif kind == 'truncate':
            del data[pos:]
        elif kind == 'insert':
            data[pos:pos] = m[2]
        elif kind == 'delete':
            del data[pos:pos + m[2]]
        elif kind == 'word':
            pos -= pos % 4  # records are 4-byte aligned: hit real fields
            data[pos:pos + 4] = struct.pack('<I', m[2])
    return bytes(data)


IDX_LINE = st.one_of(
    st.text(alphabet='0123456789\t -x', max_size=12),
    st.binary(max_size=12).map(lambda b: b.decode('latin1')),
    st.tuples(st.integers(-2, 20), st.integers(-8, 1 << 40)).map(lambda t: '%d\t%d' % t),
)


def idx_mutation():
    line = st.integers(0, 40)
    return st.one_of(
        st.tuples(st.just('replace'), line, IDX_LINE),
        st.tuples(st.just('insert'), line, IDX_LINE),
        st.tuples(st.just('delete'), line),
        st.tuples(st.just('duplicate'), line),
        st.tuples(st.just('shift'), line, st.sampled_from([-8, -4, -1, 1, 4, 8, 40, 1 << 20])),
        st.tuples(st.just('swap'), line, line),
        st.tuples(st.just('rekey'), line, st.integers(-1, 30)),
    )


def mutate_idx(data, mutations):
    lines = data.decode('latin1').splitlines()
    for m in mutations:
        if not lines:
            break
        i = m[1] % len(lines)
        if m[0] == 'replace':
            lines[i] = m[2]
        elif m[0] == 'insert':
            lines.insert(i, m[2])
        elif m[0] == 'delete':
            del lines[i]
        elif m[0] == 'duplicate':
            lines.insert(i, lines[i])
        elif m[0] in ('shift', 'rekey'):
            parts = lines[i].split('\t')
            if len(parts) == 2 and all(p.lstrip('-').isdigit() for p in parts):
                key, offset = int(parts[0]), int(parts[1])
                if m[0] == 'shift':
                    offset += m[2]
                else:
                    key = m[2]
                lines[i] = '%d\t%d' % (key, offset)
        elif m[0] == 'swap':
            j = m[2] % len(lines)
            a, b = lines[i].split('\t'), lines[j].split('\t')
            if len(a) == 2 and len(b) == 2:
                lines[i], lines[j] = a[0] + '\t' + b[1], b[0] + '\t' + a[1]
    return ('\n'.join(lines) + '\n').encode('latin1')


# -------------------------------------------------------------------------------- tests

@FUZZ
@given(which=st.sampled_from(['header', 'plain']),
       rec_mutations=st.lists(byte_mutation(), max_size=4),
       idx_mutations=st.lists(idx_mutation(), max_size=3))
def test_recordio_reader_on_mutated_files(valid, which, rec_mutations, idx_mutations):
    rec_bytes, idx_bytes = valid[which]
    rec, idx = write(valid['folder'], 'fuzz', mutate(rec_bytes, rec_mutations),
                     mutate_idx(idx_bytes, idx_mutations))
    with time_limit(10):
        only_package_errors(read_all, rec, idx)
        only_package_errors(read_all, rec, idx, skip_bad=True)
        only_package_errors(lambda: list(recordio.scan_records(rec)))

        def every_record():
            reader = recordio.RecordReader(rec, idx, partial_index=True)
            for key in reader.keys:
                only_package_errors(reader.read_header, key)
        only_package_errors(every_record)


@FUZZ
@given(which=st.integers(0, 3), mutations=st.lists(byte_mutation(), min_size=1, max_size=4),
       splice=st.sampled_from([b'', b'cos\nsystem\n', b'c__builtin__\neval\n', b'\x8e' +
                               struct.pack('<Q', 1 << 40), b'r\xff\xff\xff\x7f', b'(' * 64,
                               b'\x95' + struct.pack('<Q', 1 << 35), b'\x82\x01', b'P0\n',
                               b'cnumpy\ndtype\n(X\x02\x00\x00\x00O8\x89\x88tR']),
       where=st.integers(0, 4096))
def test_bin_loader_on_mutated_pickles(valid, which, mutations, splice, where):
    blob = mutate(valid['bins'][which], mutations)
    where %= len(blob) + 1
    blob = blob[:where] + splice + blob[where:]
    path = valid['folder'] / 'fuzz.bin'
    path.write_bytes(blob)
    with time_limit(10):
        only_package_errors(read_bin, path)
        only_package_errors(load_bin, path, (SIZE, SIZE))


def test_mutations_reach_both_outcomes(valid):
    """The mutations are not all fatal (nor all harmless): the fuzzing explores both paths."""
    rec_bytes, idx_bytes = valid['header']
    outcomes = set()
    for mutations in ([('flip', 40 + 8 * 5, 0)],          # inside the first image's bytes
                      [('word', 4, 0xFFFFFFFF)],          # the header record's length word
                      [('truncate', len(rec_bytes) - 3)]):
        rec, idx = write(valid['folder'], 'outcome', mutate(rec_bytes, mutations), idx_bytes)
        outcomes.add(only_package_errors(read_all, rec, idx))
    assert outcomes == {True, False}
