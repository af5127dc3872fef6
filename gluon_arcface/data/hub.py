"""Dataset hub in the style of d2l: ``DATA_HUB``, ``download`` and ``download_extract``.

Downloads are streamed to a temporary file and renamed into place only once complete and with the
expected sha1; archives are checked member by member before anything is extracted, extracted into a
temporary folder and moved into place. So an interrupted run never leaves a partial file or folder
under a final name that a later run would trust.

Some datasets are generated locally instead of downloaded (``GENERATED``); ``download_extract``
handles both kinds.
"""
import gzip
import hashlib
import importlib
import json
import lzma
import os
import re
import shutil
import sys
import tarfile
import uuid
import zipfile
import zlib

import requests
from tqdm import tqdm

from ..runtime.errors import (ChecksumError, DownloadError, FaceDataError, UnknownDatasetError,
                              UnsafeArchiveError)
from ..runtime.fileio import atomic_write, write_json

__all__ = ['DATA_HUB', 'DATA_URL', 'GENERATED', 'UnknownDatasetError', 'download',
           'download_extract', 'get_data_home', 'safe_extract']

DATA_URL = 'http://d2l-data.s3-accelerate.amazonaws.com/'

DATA_HUB = {
    'faces-casia-ultrasmall': (DATA_URL + 'faces-casia-ultrasmall.zip',
                               '352b9a33ca089307a07cec80c23b1765d304e95a'),
    'faces-casia-small': (DATA_URL + 'faces-casia-small.zip',
                          'b2eed95fd98296c25af65623b8aaa3ee87f982ff'),
}

# name -> 'module:function' (imported on first use) or a callable; called as ``function(root)``, it
# writes the dataset into the existing empty folder ``root``.
GENERATED = {'faces-synthetic': 'gluon_arcface.data.synthetic:make_faces_synthetic'}

TIMEOUT = (10, 60)  # seconds: (connect, between two reads)
CHUNK_SIZE = 1 << 20
COMPLETE_MARKER = '.complete'  # written last inside a generated dataset folder
_TAR_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tbz2', '.tar.xz', '.txz')


def get_data_home():
    """The dataset cache folder: ``$GLUON_ARCFACE_HOME``, or ``~/.gluon_arcface/data``."""
    return os.path.expanduser(os.environ.get('GLUON_ARCFACE_HOME') or '~/.gluon_arcface/data')


def _known_names():
    return ', '.join(sorted(set(DATA_HUB) | set(GENERATED)))


def _hub_entry(name):
    """``(url, sha1)`` of a hub entry; $GLUON_ARCFACE_DATA_URL replaces DATA_URL (a mirror)."""
    if name in DATA_HUB:
        url, sha1 = DATA_HUB[name]
        mirror = os.environ.get('GLUON_ARCFACE_DATA_URL')
        if mirror and url.startswith(DATA_URL):
            url = mirror.rstrip('/') + '/' + url[len(DATA_URL):]
        return url, sha1
    if name in GENERATED:
        raise ValueError(f'{name!r} is generated locally, not downloaded: '
                         f'use download_extract({name!r})')
    raise UnknownDatasetError(f'unknown dataset {name!r}; known datasets: {_known_names()}')


def _offline_hint(name):
    if name.startswith('faces-casia-'):
        return (" To work without network access, use download_extract('faces-synthetic') "
                "or your own data with --data-dir.")
    return ''


def file_sha1(path):
    """The SHA-1 hex digest of a file, read in chunks."""
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b''):
            h.update(chunk)
    return h.hexdigest()


def _temp_name(folder, stem, kind):
    """A hidden, unique name in ``folder`` (same file system as the final name)."""
    return os.path.join(folder, f'.{stem}.{kind}-{uuid.uuid4().hex[:12]}')


def _move_aside(path, reason='existed without a completion marker'):
    """Rename an existing file or folder out of the way (never delete what may be a user's)."""
    if os.path.lexists(path):
        aside = '%s.old-%s' % (path, uuid.uuid4().hex[:8])
        os.replace(path, aside)
        print(f'{path} {reason}; kept it as {aside}', file=sys.stderr)


def download(name, cache_dir=None):
    """Download ``DATA_HUB[name]`` into ``cache_dir`` and return the local file name.

    A cached file whose sha1 matches is returned without network access.
    """
    url, sha1 = _hub_entry(name)
    cache_dir = os.path.expanduser(cache_dir or get_data_home())
    os.makedirs(cache_dir, exist_ok=True)
    fname = os.path.join(cache_dir, url.split('/')[-1])
    if os.path.isfile(fname):
        if file_sha1(fname) == sha1:
            return fname
        os.remove(fname)  # stale or corrupt: the final name must only ever hold a verified file
    print(f'Downloading {fname} from {url}...', file=sys.stderr)
    with atomic_write(fname) as tmp:  # the final name only ever holds a verified file
        with open(tmp, 'wb') as f:
            actual = _fetch(name, url, f)
        if actual != sha1:
            raise ChecksumError(f'sha1 mismatch for {url}: expected {sha1}, got {actual}; '
                                'the download was discarded.')
    return fname


def _fetch(name, url, f):
    """Stream ``url`` into the open file ``f`` with a progress bar; return the sha1."""
    h, received, total, started = hashlib.sha1(), 0, None, False
    try:
        with requests.get(url, stream=True, timeout=TIMEOUT) as r:
            r.raise_for_status()
            started = True
            try:
                total = int(r.headers.get('Content-Length', '')) or None
            except ValueError:
                total = None
            if r.headers.get('Content-Encoding', 'identity') != 'identity':
                total = None  # the length is that of the encoded body, not of the file
            with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024,
                      desc=url.split('/')[-1], file=sys.stderr) as bar:
                for chunk in r.iter_content(chunk_size=CHUNK_SIZE):
                    f.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except requests.HTTPError as e:
        status = f'{e.response.status_code} {e.response.reason}'
        raise DownloadError(f'could not download {url}: HTTP {status}. The machine may be '
                            f'offline, or the server refused the request.{_offline_hint(name)}'
                            ) from e
    except requests.RequestException as e:
        if started:
            raise DownloadError(f'download of {url} was interrupted ({e}). Nothing was saved; '
                                f'try again.{_offline_hint(name)}') from e
        raise DownloadError(f'could not download {url} ({e}). The machine may be offline or '
                            f'unable to reach the server.{_offline_hint(name)}') from e
    if total is not None and received != total:
        raise DownloadError(f'download of {url} was cut short: received {received} of {total} '
                            f'bytes (connection dropped). Nothing was saved; try again.'
                            f'{_offline_hint(name)}')
    return h.hexdigest()


def _strip_archive_suffix(path):
    for suffix in _TAR_SUFFIXES:
        if path.endswith(suffix):
            return path[:-len(suffix)]
    return os.path.splitext(path)[0]


def _unsafe(archive_path, member, reason):
    err = UnsafeArchiveError(f'{archive_path}: member {member!r} {reason}; refusing to extract '
                             'the archive (nothing was written)')
    err.archive, err.member = str(archive_path), member
    return err


def _check_member_path(archive_path, member, dest):
    parts = re.split(r'[\\/]', member)
    if member.startswith(('/', '\\')) or re.match(r'[A-Za-z]:', member) or os.path.isabs(member):
        raise _unsafe(archive_path, member, 'has an absolute path')
    if '..' in parts:
        raise _unsafe(archive_path, member, "has a '..' component")
    target = os.path.normpath(os.path.join(dest, member))
    if os.path.commonpath([dest, target]) != dest:
        raise _unsafe(archive_path, member, f'would be written outside {dest}')


def safe_extract(archive_path, dest_dir):
    """Extract a zip or tar(.gz) archive into ``dest_dir``; return its top-level entry names.

    Every member is checked first: an absolute path, a '..' component, or (tar) a link, device or
    fifo raises ``UnsafeArchiveError`` before anything is written. A corrupt or truncated archive
    raises ``FaceDataError`` naming it (``download_extract`` extracts into a temporary folder,
    so nothing is left behind; here, members extracted before the bad one stay in ``dest_dir``).
    """
    archive_path = str(archive_path)
    try:
        return _safe_extract(archive_path, os.path.abspath(dest_dir))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile,
            lzma.LZMAError) as e:
        raise FaceDataError(archive_path, 'not a readable %s archive (%s: %s); download it again'
                            % ('zip' if archive_path.endswith('.zip') else 'tar',
                               type(e).__name__, e)) from None


def _safe_extract(archive_path, dest):
    if archive_path.endswith('.zip'):
        with zipfile.ZipFile(archive_path) as zf:
            names = zf.namelist()
            for member in names:
                _check_member_path(archive_path, member, dest)
            os.makedirs(dest, exist_ok=True)
            zf.extractall(dest)
    elif archive_path.endswith(_TAR_SUFFIXES):
        with tarfile.open(archive_path) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member_path(archive_path, m.name, dest)
                if not (m.isreg() or m.isdir()):
                    kind = ('symlink' if m.issym() else 'hardlink' if m.islnk() else
                            'fifo' if m.isfifo() else 'device' if m.isdev() else 'special file')
                    raise _unsafe(archive_path, m.name, f'is a {kind}')
            os.makedirs(dest, exist_ok=True)
            if hasattr(tarfile, 'data_filter'):  # defence in depth where Python has it
                tf.extractall(dest, members, filter='data')
            else:
                tf.extractall(dest, members)
            names = [m.name for m in members]
    else:
        raise ValueError(f'{archive_path}: only zip and tar archives can be extracted')
    tops = {re.split(r'[\\/]', os.path.normpath(n))[0] for n in names}
    return sorted(tops - {'', '.'})


def _marker_path(archive_path):
    folder, base = os.path.split(archive_path)
    return os.path.join(folder, f'.{base}.extracted')


def _is_extracted(archive_path, sha1):
    """Whether ``archive_path`` (with this sha1) was completely extracted beside itself."""
    try:
        with open(_marker_path(archive_path), encoding='utf-8') as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    folder = os.path.dirname(archive_path)
    return (isinstance(info, dict) and info.get('sha1') == sha1 and
            all(os.path.exists(os.path.join(folder, e)) for e in info.get('entries', [])))


def _extract_beside(archive_path, sha1):
    """Extract ``archive_path`` into its own folder, via a temporary folder, then mark it done."""
    base_dir, base = os.path.split(archive_path)
    marker = _marker_path(archive_path)
    tmp = _temp_name(base_dir, base, 'extract')
    try:
        entries = safe_extract(archive_path, tmp)
        for entry in entries:
            if entry in (base, os.path.basename(marker)):
                raise _unsafe(archive_path, entry, 'would overwrite the archive or its marker')
        if os.path.exists(marker):
            os.remove(marker)
        for entry in entries:
            dst = os.path.join(base_dir, entry)
            _move_aside(dst)  # from an older, incomplete extraction, or the user's own
            os.replace(os.path.join(tmp, entry), dst)
        write_json(marker, {'archive': base, 'sha1': sha1, 'entries': entries})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve_generator(spec):
    if callable(spec):
        return spec
    module, _, func = spec.partition(':')
    return getattr(importlib.import_module(module), func)


def _read_marker(folder):
    try:
        with open(os.path.join(folder, COMPLETE_MARKER), encoding='utf-8') as f:
            return f.read()
    except OSError:
        return None


def _same_generator(found, stamp):
    """Whether two completion stamps name the same generator function and version; where the
    function's module lives does not count (a folder made before a module moved is current)."""
    def key(text):
        match = re.match(r'^generated by (.*) version (\d+)\n?$', text)
        return (match.group(1).rsplit(':', 1)[-1].rsplit('.', 1)[-1], match.group(2)) \
            if match else text
    return key(found) == key(stamp)


def _generate(name, base_dir):
    """Build ``GENERATED[name]`` into ``base_dir/name`` (via a temporary folder) unless complete."""
    target = os.path.join(base_dir, name)
    make = _resolve_generator(GENERATED[name])
    # A generator may carry a ``version``: a cached copy made by another version is rebuilt
    # (the old folder is moved aside, not deleted).
    stamp = f'generated by {GENERATED[name]!s} version {getattr(make, "version", 1)}\n'
    found = _read_marker(target)
    if found is not None and _same_generator(found, stamp):
        return target
    os.makedirs(base_dir, exist_ok=True)
    tmp = _temp_name(base_dir, name, 'tmp')
    os.makedirs(tmp)
    try:
        make(tmp)
        with open(os.path.join(tmp, COMPLETE_MARKER), 'w', encoding='utf-8') as f:
            f.write(stamp)
        _move_aside(target, 'existed without a completion marker' if found is None else
                    'was made by another version of the generator')
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if _read_marker(target) != stamp:
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_extract(name, folder=None, cache_dir=None):
    """Download and extract a hub archive (or generate a ``GENERATED`` dataset); return its folder.

    As in d2l, a zip or tar is extracted into the folder holding it and the result is that folder
    joined with ``folder`` when given, else the archive's name without its extension. A complete
    earlier extraction of the same archive (same sha1) is reused without network access.
    """
    base_dir = os.path.expanduser(cache_dir or get_data_home())
    if name in GENERATED and name not in DATA_HUB:
        data_dir = _generate(name, base_dir)
        return os.path.join(base_dir, folder) if folder else data_dir
    url, sha1 = _hub_entry(name)
    fname = os.path.join(base_dir, url.split('/')[-1])
    if not _is_extracted(fname, sha1):
        fname = download(name, base_dir)
        _extract_beside(fname, sha1)
    data_dir = _strip_archive_suffix(fname)
    return os.path.join(base_dir, folder) if folder else data_dir
