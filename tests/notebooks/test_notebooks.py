"""Every notebook in notebooks/ runs top to bottom with papermill on faces-synthetic.

Each one is executed exactly as

    papermill notebooks/NAME.ipynb out.ipynb \
        -p dataset faces-synthetic -p num_epochs 1 -p batch_size 32

(papermill's command line, started with this interpreter as ``python -m papermill``, from the
repository root) with two placement options: ``--cwd`` runs the kernel in a session-scoped working
directory, so the notebooks' ``output_dir`` (relative) lands there, and ``--kernel python3``.
The kernel ``python3`` resolves to this interpreter: jupyter_client starts a kernelspec whose
command is ``python`` with ``sys.executable`` of the process launching it (checked by
``test_kernel_is_this_interpreter``), and kernelspecs outside this environment are hidden.
``GLUON_ARCFACE_HOME`` points at a session-scoped folder where faces-synthetic is generated once;
IPython, Jupyter and matplotlib state goes to the session folder too, so nothing is written to the
repository or the home directory. A test fails on any cell error.
"""
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
PARAMS = ['-p', 'dataset', 'faces-synthetic', '-p', 'num_epochs', '1', '-p', 'batch_size', '32']
# training_arcface runs first: verification.ipynb then reuses the network it trained (same
# output_dir); run alone, verification.ipynb trains its own.
NOTEBOOKS = ['training_arcface', 'verification', 'datasets', 'model_and_margins', 'exercises',
             'own_photos', 'identification']
# Files each notebook must leave in <cwd>/notebook_runs/<name>/.
OUTPUTS = {
    'training_arcface': ['batch.png', 'curves.png', 'trainblock.params', 'run.json'],
    'verification': ['similarities.png', 'roc.png', 'pairs.png', 'model/faceresnet18-symbol.json',
                     'model/faceresnet18-0000.params'],
    'datasets': ['identities.png', 'pairs.png', 'batch.png', 'no_header.rec'],
    'model_and_margins': ['parameters.png', 'target_logits.png', 'decision_boundaries.png'],
    'exercises': ['results.csv', 'results.png'],
    'own_photos': ['augmentation.png', 'results.json', 'small-data/curves.png', 'photos.png',
                   'small-data/roc.png', 'chapter/config.json'],
    'identification': ['known.npz', 'named.jpg', 'cmc.png', 'metrics.json'],
}


def test_every_notebook_is_tested():
    found = sorted(p.stem for p in (REPO / 'notebooks').glob('*.ipynb'))
    assert found == sorted(NOTEBOOKS)


@pytest.fixture(scope='session')
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp('notebooks')
    env = {k: v for k, v in os.environ.items() if k not in ('JUPYTER_PATH', 'PYTHONPATH')}
    env.update(
        GLUON_ARCFACE_HOME=str(root / 'data'),
        IPYTHONDIR=str(root / 'ipython'),
        JUPYTER_DATA_DIR=str(root / 'jupyter-data'),  # hides kernelspecs of the user's home
        JUPYTER_RUNTIME_DIR=str(root / 'jupyter-runtime'),
        JUPYTER_CONFIG_DIR=str(root / 'jupyter-config'),
        MPLCONFIGDIR=str(root / 'matplotlib'),
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
    )
    # Generate faces-synthetic once, here, so that no notebook's time includes it.
    import gluon_arcface as gaf
    gaf.download_extract('faces-synthetic', cache_dir=str(root / 'data'))
    work = root / 'work'
    work.mkdir()
    (root / 'out').mkdir()
    return SimpleNamespace(root=root, env=env, work=work)


def papermill(session, notebook, output, params=()):
    """Run papermill's command line from the repository root; return (CompletedProcess, s)."""
    cmd = [sys.executable, '-m', 'papermill', str(notebook), str(output), *params,
           '--kernel', 'python3', '--cwd', str(session.work), '--no-progress-bar']
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=session.env, capture_output=True, text=True,
                          timeout=900)
    return proc, time.time() - start


def cell_errors(nb):
    return ['cell %d: %s: %s' % (i, out.get('ename'), out.get('evalue'))
            for i, cell in enumerate(nb.cells) if cell.cell_type == 'code'
            for out in cell.get('outputs', []) if out.get('output_type') == 'error']


def test_kernel_is_this_interpreter(session):
    """The kernel papermill starts is this Python (the .venv's under `make test`)."""
    probe = nbformat.v4.new_notebook()
    probe.metadata['kernelspec'] = {'name': 'python3', 'language': 'python',
                                    'display_name': 'Python 3'}
    probe.cells = [nbformat.v4.new_code_cell(
        'import os, sys\nprint(sys.executable)\nprint(sys.prefix)\nprint(os.getcwd())')]
    src, out = session.root / 'probe.ipynb', session.root / 'out' / 'probe.ipynb'
    nbformat.write(probe, str(src))
    proc, _ = papermill(session, src, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executable, prefix, cwd = nbformat.read(str(out), 4).cells[0].outputs[0]['text'].split('\n')[:3]
    assert executable == sys.executable
    assert os.path.realpath(prefix) == os.path.realpath(sys.prefix)
    assert os.path.realpath(cwd) == os.path.realpath(session.work)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs(name, session, record_property):
    source = 'notebooks/%s.ipynb' % name
    nb = nbformat.read(str(REPO / source), 4)
    first = next(c for c in nb.cells if c.cell_type == 'code')
    assert 'parameters' in first.metadata.get('tags', []), 'first code cell must be tagged'
    for line in ("dataset = 'faces-casia-ultrasmall'", 'num_epochs = 5', 'batch_size = 512'):
        assert line in first.source, 'chapter default missing: %s' % line
    repo_files = set(os.listdir(REPO)) | set(os.listdir(REPO / 'notebooks'))

    output = session.root / 'out' / ('%s.ipynb' % name)
    proc, seconds = papermill(session, source, output, PARAMS)
    record_property('notebook_seconds', round(seconds, 1))
    print('%s: %.1f s' % (name, seconds))

    assert output.is_file(), proc.stderr[-3000:]
    executed = nbformat.read(str(output), 4)
    errors = cell_errors(executed)
    assert proc.returncode == 0 and not errors, '\n'.join(errors) + '\n' + proc.stderr[-3000:]
    injected = [c for c in executed.cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert injected and 'dataset = "faces-synthetic"' in injected[0].source
    assert 'num_epochs = 1' in injected[0].source and 'batch_size = 32' in injected[0].source
    images = [o for c in executed.cells if c.cell_type == 'code' for o in c.get('outputs', [])
              if 'image/png' in o.get('data', {}) or 'image/svg+xml' in o.get('data', {})]
    assert images, 'no figure was shown'
    run_dir = session.work / 'notebook_runs' / name
    missing = [f for f in OUTPUTS[name] if not (run_dir / f).is_file()]
    assert not missing, 'missing outputs in %s: %s' % (run_dir, missing)
    assert set(os.listdir(REPO)) | set(os.listdir(REPO / 'notebooks')) == repo_files, \
        'the notebook wrote into the repository'


def test_training_curves_drawn_while_training(session):
    """train_ch_facerec drew its d2l.Animator in the training cell (papermill's IPython kernel)."""
    output = session.root / 'out' / 'training_arcface.ipynb'
    if not output.is_file():
        pytest.skip('training_arcface.ipynb did not run in this session')
    executed = nbformat.read(str(output), 4)
    cell = next(c for c in executed.cells
                if c.cell_type == 'code' and 'gaf.train_ch_facerec(' in c.source)
    assert any('image/svg+xml' in o.get('data', {}) for o in cell.outputs), cell.outputs
