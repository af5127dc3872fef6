"""The dataset hub against a real HTTP server on 127.0.0.1 (no internet needed)."""
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import uuid
import zipfile

import pytest

from gluon_arcface import hub
from gluon_arcface.runtime.errors import ChecksumError, DownloadError, UnsafeArchiveError

TINY_FILES = {'tiny/property': b'2,8,8\n', 'tiny/00000000/0.jpg': b'jpeg0',
              'tiny/00000001/0.jpg': b'jpeg1'}


def make_zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members, mode='w:gz'):
    """members: list of (TarInfo, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_file(name, data):
    return tarfile.TarInfo(name), data


def tar_special(name, type_, linkname=''):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info, None


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def all_files(root):
    """Every file, link and folder under root, relative to it."""
    out = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(folder, name), root))
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (body, mode)``; mode 'short' sends half and hangs up."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, mode = self.server.routes[self.path]
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if mode == 'short' else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    srv.routes, srv.requests = {}, []
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}'
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty data home and an empty hub (entries are added per test)."""
    monkeypatch.setenv('GLUON_ARCFACE_HOME', str(tmp_path / 'home'))
    monkeypatch.setattr(hub, 'DATA_HUB', {})
    return tmp_path / 'home'


def serve(server, name, body, sha=None, mode='ok', filename=None):
    """Serve ``body`` and register it in the hub as ``name``; return the URL."""
    path = '/' + (filename or name + '.zip')
    server.routes[path] = (body, mode)
    hub.DATA_HUB[name] = (server.url + path, sha or sha1(body))
    return server.url + path


def test_download_extract_success(server, home, capsys):
    serve(server, 'tiny', make_zip(TINY_FILES))
    data_dir = hub.download_extract('tiny')
    assert data_dir == str(home / 'tiny')
    for name, data in TINY_FILES.items():
        assert (home / name).read_bytes() == data
    assert hub.download_extract('tiny', 'tiny/00000001') == str(home / 'tiny' / '00000001')
    err = capsys.readouterr().err
    assert 'tiny.zip' in err and '100%' in err  # the progress bar
    # The archive stays cached beside the data; no temporary file or folder is left.
    assert sorted(os.listdir(home)) == ['.tiny.zip.extracted', 'tiny', 'tiny.zip']


def test_tar_gz_archive(server, home):
    folder = tarfile.TarInfo('pack')
    folder.type = tarfile.DIRTYPE
    serve(server, 'pack', make_tar([(folder, None), tar_file('pack/a.txt', b'a')]),
          filename='pack.tar.gz')
    assert hub.download_extract('pack') == str(home / 'pack')  # not 'pack.tar', as d2l would
    assert (home / 'pack' / 'a.txt').read_bytes() == b'a'


def test_cached_download_and_extraction_are_reused(server, home):
    serve(server, 'tiny', make_zip(TINY_FILES))
    fname = hub.download('tiny')
    assert hub.download('tiny') == fname
    assert len(server.requests) == 1
    data_dir = hub.download_extract('tiny')
    (home / 'tiny' / 'sentinel').write_bytes(b'')  # re-extraction would remove it
    server.shutdown()  # from now on any network access would fail
    assert hub.download_extract('tiny') == data_dir
    assert (home / 'tiny' / 'sentinel').exists()
    assert len(server.requests) == 1


def test_corrupt_cached_file_is_downloaded_again(server, home):
    body = make_zip(TINY_FILES)
    serve(server, 'tiny', body)
    home.mkdir()
    (home / 'tiny.zip').write_bytes(b'truncated')
    with open(hub.download('tiny'), 'rb') as f:
        assert f.read() == body
    assert len(server.requests) == 1


def test_sha1_mismatch_keeps_nothing(server, home):
    body = make_zip(TINY_FILES)
    url = serve(server, 'tiny', body, sha='0' * 40)
    with pytest.raises(ChecksumError) as info:
        hub.download_extract('tiny')
    msg = str(info.value)
    assert url in msg and '0' * 40 in msg and sha1(body) in msg
    assert os.listdir(home) == []  # no final file, no temporary file, no folder


def test_interrupted_transfer_keeps_nothing(server, home):
    url = serve(server, 'tiny', make_zip(TINY_FILES), mode='short')
    with pytest.raises(DownloadError, match='interrupted|cut short') as info:
        hub.download_extract('tiny')
    assert url in str(info.value)
    assert os.listdir(home) == []
    # Once the server behaves, a retry succeeds.
    server.routes['/tiny.zip'] = (server.routes['/tiny.zip'][0], 'ok')
    assert os.path.isdir(hub.download_extract('tiny'))


def test_http_404_explains_and_points_to_offline_data(server, home):
    url = server.url + '/faces-casia-ultrasmall.zip'
    hub.DATA_HUB['faces-casia-ultrasmall'] = (url, '1' * 40)
    with pytest.raises(DownloadError) as info:
        hub.download_extract('faces-casia-ultrasmall')
    msg = str(info.value)
    assert url in msg and '404' in msg and 'offline' in msg
    assert "download_extract('faces-synthetic')" in msg and '--data-dir' in msg
    assert os.listdir(home) == []


def test_connection_refused_explains(home):
    with socket.socket() as sock:  # bound but not listening: connections are refused
        sock.bind(('127.0.0.1', 0))
        url = f'http://127.0.0.1:{sock.getsockname()[1]}/faces-casia-small.zip'
        hub.DATA_HUB['faces-casia-small'] = (url, '1' * 40)
        with pytest.raises(DownloadError) as info:
            hub.download('faces-casia-small')
    msg = str(info.value)
    assert url in msg and 'offline' in msg and '--data-dir' in msg
    assert os.listdir(home) == []


def test_unknown_name_lists_known_names():
    for func in (hub.download, hub.download_extract):
        with pytest.raises(KeyError) as info:
            func('faces-casia-huge')
        msg = str(info.value)
        for name in ('faces-casia-ultrasmall', 'faces-casia-small', 'faces-synthetic'):
            assert name in msg


def test_data_home(monkeypatch, tmp_path):
    monkeypatch.delenv('GLUON_ARCFACE_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert hub.get_data_home() == str(tmp_path / '.gluon_arcface' / 'data')
    monkeypatch.setenv('GLUON_ARCFACE_HOME', str(tmp_path / 'elsewhere'))
    assert hub.get_data_home() == str(tmp_path / 'elsewhere')


def evil_archive(case, outside):
    """(file name, bytes, offending member) of an archive with a member escaping its folder."""
    ok = tar_file('ok.txt', b'ok')
    return {
        'zip-dotdot': ('a.zip', make_zip({'ok.txt': b'ok', '../evil.txt': b'x'}), '../evil.txt'),
        'zip-absolute': ('a.zip', make_zip({'ok.txt': b'ok', outside: b'x'}), outside),
        'tar-dotdot': ('a.tar.gz', make_tar([ok, tar_file('../evil.txt', b'x')]), '../evil.txt'),
        'tar-absolute': ('a.tar', make_tar([ok, tar_file(outside, b'x')], mode='w'), outside),
        # The classic attack: a link to the parent folder, then a file written through it.
        'tar-symlink': ('a.tar.gz', make_tar([ok, tar_special('link', tarfile.SYMTYPE, '..'),
                                              tar_file('link/evil.txt', b'x')]), 'link'),
        'tar-hardlink': ('a.tar.gz', make_tar([ok, tar_special('hard', tarfile.LNKTYPE,
                                                                 'ok.txt')]), 'hard'),
        'tar-fifo': ('a.tar.gz', make_tar([ok, tar_special('pipe', tarfile.FIFOTYPE)]), 'pipe'),
    }[case]


@pytest.mark.parametrize('case', ['zip-dotdot', 'zip-absolute', 'tar-dotdot', 'tar-absolute',
                                  'tar-symlink', 'tar-hardlink', 'tar-fifo'])
def test_safe_extract_rejects_escaping_members(tmp_path, case):
    outside = str(tmp_path / 'abs_evil.txt')
    fname, body, member = evil_archive(case, outside)
    archive = tmp_path / fname
    archive.write_bytes(body)
    dest = tmp_path / 'box' / 'dest'
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError) as info:
        hub.safe_extract(str(archive), str(dest))
    assert str(archive) in str(info.value) and repr(member) in str(info.value)
    # Nothing was written, neither outside the folder nor inside it.
    assert all_files(tmp_path) == {fname, 'box', os.path.join('box', 'dest')}


def test_download_extract_rejects_unsafe_archive(server, home, tmp_path):
    serve(server, 'evil', make_zip({'evil/ok.txt': b'ok', '../../evil.txt': b'x'}))
    with pytest.raises(UnsafeArchiveError):
        hub.download_extract('evil')
    assert os.listdir(home) == ['evil.zip']  # the verified download only: no folder, no marker
    assert not (tmp_path / 'evil.txt').exists()


def test_interrupted_extraction_is_redone(server, home, monkeypatch):
    serve(server, 'tiny', make_zip(TINY_FILES))
    real_extract = hub.safe_extract

    def crash(archive, dest):
        os.makedirs(os.path.join(dest, 'tiny'))
        open(os.path.join(dest, 'tiny', 'property'), 'wb').close()
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, 'safe_extract', crash)
    with pytest.raises(KeyboardInterrupt):
        hub.download_extract('tiny')
    assert os.listdir(home) == ['tiny.zip']  # no half-extracted folder
    # A stale folder without the completion marker (an older, incomplete run) is replaced.
    (home / 'tiny').mkdir()
    (home / 'tiny' / 'junk').write_bytes(b'')
    monkeypatch.setattr(hub, 'safe_extract', real_extract)
    hub.download_extract('tiny')
    assert all_files(home / 'tiny') == {'property', '00000000', '00000001',
                                        os.path.join('00000000', '0.jpg'),
                                        os.path.join('00000001', '0.jpg')}
    assert len(server.requests) == 1


def test_generated_dataset_is_built_once(home, monkeypatch):
    calls = []

    def generate(root):
        assert os.listdir(root) == []
        with open(os.path.join(root, 'property'), 'w') as f:
            f.write('2,8,8\n')
        calls.append(root)

    monkeypatch.setattr(hub, 'GENERATED', {'faces-synthetic': generate})
    data_dir = hub.download_extract('faces-synthetic')
    assert data_dir == str(home / 'faces-synthetic')
    assert (home / 'faces-synthetic' / 'property').read_text() == '2,8,8\n'
    assert hub.download_extract('faces-synthetic') == data_dir
    assert len(calls) == 1
    assert os.listdir(home) == ['faces-synthetic']
    with pytest.raises(ValueError, match='download_extract'):
        hub.download('faces-synthetic')


def test_generated_dataset_of_another_generator_version_is_rebuilt_and_kept(home, monkeypatch):
    def generate(root):
        with open(os.path.join(root, 'property'), 'w') as f:
            f.write('%d,8,8\n' % generate.version)

    generate.version = 1
    monkeypatch.setattr(hub, 'GENERATED', {'faces-synthetic': generate})
    data_dir = hub.download_extract('faces-synthetic')
    generate.version = 2
    assert hub.download_extract('faces-synthetic') == data_dir
    assert (home / 'faces-synthetic' / 'property').read_text() == '2,8,8\n'
    old = [d for d in os.listdir(home) if d.startswith('faces-synthetic.old-')]
    assert len(old) == 1 and (home / old[0] / 'property').read_text() == '1,8,8\n'


def test_failed_generation_leaves_nothing_and_retry_works(home, monkeypatch):
    def broken(root):
        with open(os.path.join(root, 'property'), 'w') as f:
            f.write('2,8,8\n')
        raise RuntimeError('disk full')

    monkeypatch.setattr(hub, 'GENERATED', {'faces-synthetic': broken})
    with pytest.raises(RuntimeError, match='disk full'):
        hub.download_extract('faces-synthetic')
    assert os.listdir(home) == []
    # A folder without the completion marker is not trusted: it is rebuilt.
    (home / 'faces-synthetic').mkdir()
    (home / 'faces-synthetic' / 'junk').write_bytes(b'')
    monkeypatch.setattr(hub, 'GENERATED', {'faces-synthetic': lambda root: open(
        os.path.join(root, 'property'), 'w').close()})
    data_dir = hub.download_extract('faces-synthetic')
    assert sorted(os.listdir(data_dir)) == ['.complete', 'property']
    # ... and what was there is kept aside, not deleted.
    names = sorted(os.listdir(home))
    assert names[0] == 'faces-synthetic' and len(names) == 2
    assert os.listdir(home / names[1]) == ['junk']


def test_generator_given_as_module_path(home, monkeypatch, tmp_path):
    module = f'gen_{uuid.uuid4().hex}'
    (tmp_path / (module + '.py')).write_text(
        'def make(root):\n    open(root + "/property", "w").write("3,8,8\\n")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(hub, 'GENERATED', {'faces-synthetic': module + ':make'})
    data_dir = hub.download_extract('faces-synthetic')
    assert (tmp_path / 'home' / 'faces-synthetic' / 'property').read_text() == '3,8,8\n'
    assert data_dir == str(home / 'faces-synthetic')


def test_a_generator_that_moved_to_another_module_keeps_its_folder(home, monkeypatch, tmp_path):
    module = f'gen_{uuid.uuid4().hex}'
    (tmp_path / (module + '.py')).write_text(
        'def make(root):\n    open(root + "/property", "w").write("3,8,8\\n")\n'
        'make.version = 2\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(hub, 'GENERATED', {'faces-synthetic': module + ':make'})
    folder = home / 'faces-synthetic'
    folder.mkdir(parents=True)
    (folder / 'property').write_text('1,8,8\n')
    # Made by the same function and version when it lived in another module: kept as it is.
    (folder / hub.COMPLETE_MARKER).write_text('generated by old.place:make version 2\n')
    assert hub.download_extract('faces-synthetic') == str(folder)
    assert (folder / 'property').read_text() == '1,8,8\n' and os.listdir(home) == [folder.name]
    # Another function, or another version, is rebuilt (and the old folder kept aside).
    (folder / hub.COMPLETE_MARKER).write_text('generated by old.place:other version 2\n')
    hub.download_extract('faces-synthetic')
    assert (folder / 'property').read_text() == '3,8,8\n' and len(os.listdir(home)) == 2


def test_mirror_from_the_environment(home, server, monkeypatch):
    """$GLUON_ARCFACE_DATA_URL replaces the d2l base URL (a mirror or a local copy)."""
    body = make_zip({'faces-casia-ultrasmall/property': b'300,112,112\n'})
    server.routes['/faces-casia-ultrasmall.zip'] = (body, 'ok')
    hub.DATA_HUB['faces-casia-ultrasmall'] = (hub.DATA_URL + 'faces-casia-ultrasmall.zip',
                                              sha1(body))
    monkeypatch.setenv('GLUON_ARCFACE_DATA_URL', server.url + '/')
    data_dir = hub.download_extract('faces-casia-ultrasmall')
    assert open(os.path.join(data_dir, 'property')).read() == '300,112,112\n'
    assert server.requests == ['/faces-casia-ultrasmall.zip']
