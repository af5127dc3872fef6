"""scripts/train.py end to end on tiny settings, and learning on the synthetic faces."""
import json
import os
import subprocess
import sys

import numpy as onp
import pytest

import mxnet as mx
from mxnet import gluon

import gluon_arcface as gaf
from gluon_arcface.data.synthetic import SYNTHETIC_VAL, make_faces_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, 'scripts', 'train.py')


@pytest.fixture(scope='module')
def tiny_synthetic(synthetic_faces):
    return synthetic_faces(12, 4, 8, 20, 16)


def run_train(*args, env=None):
    return subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)


def test_help_lists_the_chapter_defaults():
    out = run_train('--help')
    assert out.returncode == 0
    for flag in ('--dataset', '--data-dir', '--val-targets', '--num-layers', '--emb-size',
                 '--batch-size', '--lr', '--wd', '--momentum', '--epochs', '--margin-s',
                 '--margin-m', '--margin-a', '--margin-b', '--loss', '--lr-steps', '--ctx',
                 '--output', '--resume', '--kvstore', '--model-parallel'):
        assert flag in out.stdout, flag
    text = ' '.join(out.stdout.split())
    assert 'faces-casia-ultrasmall' in text and 'lfw_small' in text
    for default in ('(default: 512;', '(default: 0.1)', '(default: 0.0005)', '(default: 64.0;'):
        assert default in text, default
    assert '(default: 512; small-data: 64; finetune: 64)' in text


def test_cli_end_to_end(tiny_synthetic, tmp_path):
    out_dir = str(tmp_path / 'run')
    common = ['--data-dir', tiny_synthetic, '--val-targets', SYNTHETIC_VAL, '--emb-size', '16',
              '--batch-size', '16', '--ctx', 'cpu:0,cpu:1', '--output', out_dir,
              '--no-progress', '--num-workers', '1', '--seed', '1', '--lr-steps', '1']
    first = run_train(*common, '--epochs', '1')
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_train(*common, '--epochs', '2', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed from' in resumed.stdout and 'after epoch 1' in resumed.stdout

    metrics = json.load(open(os.path.join(out_dir, 'metrics.json')))
    assert [e['epoch'] for e in metrics['epochs']] == [1, 2]
    for e in metrics['epochs']:
        assert set(e) >= {'epoch', 'loss', 'train_acc', 'samples_per_sec', 'seconds'}
    assert metrics['epochs'][1]['lr'] == pytest.approx(0.01)
    v = metrics['verification'][SYNTHETIC_VAL]
    assert set(v) >= {'accuracy', 'std', 'threshold', 'best_threshold_accuracy', 'xnorm',
                      'tar_at_far_1e-3'}
    assert 0 <= v['accuracy'] <= 1 and v['xnorm'] > 0
    for name in ('train.log', 'config.json', 'curves.png', 'roc.png',
                 'checkpoints/checkpoint.json', 'checkpoints/best.params',
                 'model/faceresnet18-symbol.json', 'model/faceresnet18-0000.params'):
        assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
    with open(os.path.join(out_dir, 'roc.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert 'synthetic_val' in resumed.stdout and '±' in resumed.stdout  # the final table

    # The exported network is the trained one: its embeddings verify as metrics.json says.
    net = gaf.load_embedding_net(os.path.join(out_dir, 'model', 'faceresnet18'))
    data_set = gaf.load_bin(os.path.join(tiny_synthetic, SYNTHETIC_VAL + '.bin'), (16, 16))
    res = gaf.verify(data_set, net, mx.cpu(), batch_size=16)
    assert res.accuracy == pytest.approx(v['accuracy'], abs=1e-6)


def test_offline_hub_default_points_to_the_synthetic_dataset(tmp_path):
    env = dict(os.environ, GLUON_ARCFACE_HOME=str(tmp_path),
               # an address nothing listens on: the same failure as no network
               GLUON_ARCFACE_DATA_URL='http://127.0.0.1:9/')
    out = run_train('--output', str(tmp_path / 'run'), env=env)
    assert out.returncode == 1
    assert 'faces-casia-ultrasmall' in out.stderr and 'faces-synthetic' in out.stderr
    assert '--data-dir' in out.stderr and 'Traceback' not in out.stderr
    assert not os.path.exists(tmp_path / 'faces-casia-ultrasmall.zip')


def test_bad_settings_are_one_line_errors(tiny_synthetic, tmp_path):
    out = run_train('--data-dir', tiny_synthetic, '--ctx', 'tpu:0', '--output', str(tmp_path))
    assert out.returncode == 1 and 'bad context' in out.stderr and 'Traceback' not in out.stderr
    out = run_train('--data-dir', tiny_synthetic, '--val-targets', 'lfw', '--output',
                    str(tmp_path), '--batch-size', '16')
    assert out.returncode == 1 and "'lfw' not found" in out.stderr and SYNTHETIC_VAL in out.stderr


def test_short_training_on_synthetic_faces_beats_the_untrained_network(tmp_path):
    """Identity in the synthetic faces is learnable: verification on held-out identities rises."""
    root = tmp_path / 'data'
    root.mkdir()
    make_faces_synthetic(str(root), num_identities=60, images_per_identity=8, num_heldout=30,
                         num_pairs=200, image_size=32)
    loader, val_set = gaf.load_data_face_rec(str(root), [SYNTHETIC_VAL], 32, seed=0)
    ctx = [mx.cpu()]
    net = gaf.TrainBlock(18, 64, 60, use_dropout=True, margin=dict(margin_s=16.0, margin_m=0.1))
    test_net = gaf.TestBlock(18, 64, True, params=net.collect_params())
    before = gaf.verify(val_set[SYNTHETIC_VAL], test_net, ctx, batch_size=64).accuracy
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.1, 'wd': 5e-4, 'momentum': 0.9})
    gaf.train_ch_facerec(net, loader, gluon.loss.SoftmaxCrossEntropyLoss(), trainer, 4, ctx,
                         progress=False, log=lambda *a: None)
    after = gaf.verify(val_set[SYNTHETIC_VAL], test_net, ctx, batch_size=64).accuracy
    assert after > before + 0.05, (before, after)
    assert onp.isfinite(after)


@pytest.mark.parametrize('loss', ['softmax', 'arcface', 'cosface', 'sphereface'])
def test_every_loss_trains_end_to_end(tiny_synthetic, tmp_path, loss):
    """Each --loss trains on two CPU contexts, writes its head into config.json, lowers the
    loss, verifies and exports (softmax used to fail at the first batch)."""
    out_dir = str(tmp_path / loss)
    out = run_train('--data-dir', tiny_synthetic, '--val-targets', SYNTHETIC_VAL, '--loss', loss,
                    '--emb-size', '16', '--batch-size', '16', '--ctx', 'cpu:0,cpu:1',
                    '--epochs', '3', '--lr', '0.05', '--momentum', '0.9', '--margin-s', '8',
                    '--output', out_dir, '--no-progress', '--num-workers', '1', '--seed', '1')
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.load(open(os.path.join(out_dir, 'config.json')))
    assert config['settings']['loss'] == loss
    if loss == 'softmax':
        assert config['resolved']['margin'] is None
    else:
        assert config['resolved']['margin'] == dict(gaf.MARGIN_PRESETS[loss], margin_s=8.0)
    losses = [e['loss'] for e in json.load(open(os.path.join(out_dir, 'metrics.json')))['epochs']]
    assert losses[-1] < losses[0], losses
    assert os.path.getsize(os.path.join(out_dir, 'model', 'faceresnet18-0000.params')) > 0


def test_softmax_head_model_parallel_resumes(tiny_synthetic, tmp_path):
    out_dir = str(tmp_path / 'mp')
    common = ['--data-dir', tiny_synthetic, '--val-targets', SYNTHETIC_VAL, '--loss', 'softmax',
              '--emb-size', '16', '--batch-size', '16', '--ctx', 'cpu:0,cpu:1',
              '--model-parallel', '--output', out_dir, '--no-progress', '--num-workers', '1',
              '--seed', '1']
    first = run_train(*common, '--epochs', '1')
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_train(*common, '--epochs', '2', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'after epoch 1' in resumed.stdout
    metrics = json.load(open(os.path.join(out_dir, 'metrics.json')))
    assert [e['epoch'] for e in metrics['epochs']] == [1, 2]
    # The checkpoint has the TrainBlock layout with a softmax head (weight and bias).
    arrays = mx.npx.load(os.path.join(out_dir, 'checkpoints', 'epoch-0002.params'))
    assert arrays['margin_block.fc7_weight'].shape == (12, 16)
    assert arrays['margin_block.fc7_bias'].shape == (12,)


def test_unexpected_failure_is_one_line_and_the_traceback_is_kept(tiny_synthetic, tmp_path):
    """An error from inside MXNet in the middle of an epoch (decoding threads running): exit
    status 1, one 'error:' line naming where the traceback went, no abort of the process."""
    out_dir = tmp_path / 'run'
    code = '\n'.join([
        'import runpy, sys',
        'import mxnet as mx',
        'import gluon_arcface.train.training as t',
        'real, calls = t.data_parallel_step, []',
        'def failing(*args, **kwargs):',
        '    calls.append(1)',
        '    if len(calls) == 2:',
        "        raise mx.base.MXNetError('simulated operator failure')",
        '    return real(*args, **kwargs)',
        't.data_parallel_step = failing',
        'sys.argv = sys.argv[1:]',
        "runpy.run_path(sys.argv[0], run_name='__main__')"])
    out = subprocess.run(
        [sys.executable, '-c', code, TRAIN, '--data-dir', tiny_synthetic, '--val-targets',
         SYNTHETIC_VAL, '--epochs', '1', '--batch-size', '8', '--emb-size', '16', '--output',
         str(out_dir), '--no-progress', '--num-workers', '2'],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'simulated operator failure' in errors[0]
    assert str(out_dir / 'train.log') in errors[0] and 'Traceback' not in out.stderr
    assert 'Traceback' in (out_dir / 'train.log').read_text()
