"""Mixed precision: bfloat16 backbone with float32 master weights, on one device, over two CPU
contexts and with the model-parallel head; float16's loss scaling; the device check."""
import json
import os

import numpy as onp
import pytest

import mxnet as mx
from mxnet import autograd, gluon
from mxnet import np as mnp

import gluon_arcface as gaf
from gluon_arcface import checkpoint as ckpt
from gluon_arcface import parallel, precision
from gluon_arcface.nn.model import compute_dtype_of, set_compute_dtype
from gluon_arcface.data.synthetic import SYNTHETIC_VAL

CTX2 = [mx.cpu(0), mx.cpu(1)]


def bf16_runs():
    """Whether this CPU's oneDNN runs bfloat16 convolutions (natively or emulated)."""
    try:
        x = mx.nd.ones((1, 4, 4, 4)).astype(onp.dtype([('bfloat16', onp.uint16)]))
        mx.nd.Convolution(x, x[:, :, :1, :1].reshape((4, 1, 1, 1)), kernel=(1, 1), num_filter=4,
                          num_group=4, no_bias=True).wait_to_read()
        return True
    except mx.base.MXNetError:
        return False


needs_bf16 = pytest.mark.skipif(not bf16_runs(), reason='no bfloat16 convolutions on this CPU')


def batch(n=16, size=32, classes=4, seed=0):
    rng = onp.random.RandomState(seed)
    y = onp.arange(n) % classes
    X = rng.uniform(size=(n, 3, size, size)) * 0.5 + 0.1 * y[:, None, None, None]
    return mnp.array(X.astype('float32')), mnp.array(y.astype('int32'))


def make_net(seed=1, classes=4):
    mx.random.seed(seed)
    net = gaf.TrainBlock(18, 16, classes, False, margin=dict(margin_s=8.0, margin_m=0.2))
    X, y = batch()
    net(X[:2], y[:2])
    return net


def gradients(net, dtype, X, y):
    set_compute_dtype(net, dtype)
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(X, y), y)
    loss.backward()
    return {n: p.grad().asnumpy().copy() for n, p in net._collect_params_with_prefix().items()
            if p.grad_req != 'null'}


@needs_bf16
def test_bfloat16_gradients_are_close_to_float32():
    """Stated tolerance: every weight gradient within cosine 0.98 of float32's, the whole
    gradient vector within cosine 0.995; the gradients themselves are float32."""
    X, y = batch()
    net = make_net()
    net.hybridize(static_alloc=True, static_shape=True)
    g32 = gradients(net, 'float32', X, y)
    g16 = gradients(net, 'bfloat16', X, y)
    assert {g.dtype for g in g16.values()} == {onp.dtype('float32')}

    def cosine(a, b):
        return float((a * b).sum() / (onp.linalg.norm(a) * onp.linalg.norm(b)))
    for name in g32:
        if name.endswith('weight'):
            assert cosine(g32[name], g16[name]) > 0.98, name
    flat32 = onp.concatenate([g.ravel() for g in g32.values()])
    flat16 = onp.concatenate([g16[n].ravel() for n in g32])
    assert cosine(flat32, flat16) > 0.995


@needs_bf16
@pytest.mark.parametrize('ctx', [[mx.cpu(0)], CTX2])
def test_amp_steps_lower_the_loss_and_keep_float32_parameters(ctx, tmp_path):
    net = make_net()
    net.collect_params().reset_ctx(ctx)
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.1, 'momentum': 0.9})
    X, y = batch()
    loader = [(X, y)] * 4
    history = gaf.train_ch_facerec(net, loader, gluon.loss.SoftmaxCrossEntropyLoss(), trainer, 3,
                                   ctx, amp=True, progress=False, log=lambda *a: None,
                                   checkpoint_dir=str(tmp_path))
    losses = [e['loss'] for e in history['epochs']]
    assert losses[-1] < losses[0] - 0.1, losses
    assert compute_dtype_of(net) == 'bfloat16'
    assert {p.data(c).dtype for p in net.collect_params().values() for c in ctx} == \
        {onp.dtype('float32')}
    # The checkpoint is float32 and loads into a float32 network, which then resumes.
    saved = mx.npx.load(str(tmp_path / 'epoch-0003.params'))
    assert {a.dtype for a in saved.values()} == {onp.dtype('float32')}
    other = make_net(seed=9)
    trainer = gluon.Trainer(other.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9})
    history = gaf.train_ch_facerec(other, loader, gluon.loss.SoftmaxCrossEntropyLoss(), trainer,
                                   4, mx.cpu(0), resume=True, checkpoint_dir=str(tmp_path),
                                   progress=False, log=lambda *a: None)
    assert compute_dtype_of(other) == 'float32' and len(history['epochs']) == 4


@needs_bf16
def test_amp_with_the_model_parallel_head():
    X, y = batch()
    mx.random.seed(3)
    feat = gaf.FeatBlock(18, 16, False)
    cls_nets = parallel.split_head(16, 4, CTX2, dict(margin_s=8.0, margin_m=0.2))
    feat.collect_params().reset_ctx(CTX2)
    history = gaf.train_ch_facerec_parall(feat, cls_nets, [(X, y)] * 4, 3, CTX2, amp=True,
                                          progress=False, log=lambda *a: None)
    losses = [e['loss'] for e in history['epochs']]
    assert losses[-1] < losses[0] - 0.1, losses
    assert compute_dtype_of(feat) == 'bfloat16'
    assert {p.data().dtype for b in [feat] + cls_nets for p in b.collect_params().values()} == \
        {onp.dtype('float32')}


@needs_bf16
def test_bfloat16_inference_and_export(tmp_path):
    net = make_net()
    test_net = gaf.make_test_net(net)
    X, _ = batch(8)
    e32 = gaf.compute_embeddings([X], test_net, mx.cpu(), batch_size=8, normalize=True)
    e16 = gaf.compute_embeddings([X], test_net, mx.cpu(), batch_size=8, normalize=True,
                                 dtype='bfloat16')
    assert onp.min(onp.sum(e32 * e16, axis=1)) > 0.999
    assert compute_dtype_of(test_net) == 'float32'  # the copy computed in bfloat16, not net
    paths = gaf.export_embedding_net(test_net, str(tmp_path / 'm'), (32, 32), dtype='bfloat16')
    assert 'amp_cast' in open(paths[0]).read() and compute_dtype_of(test_net) == 'float32'
    loaded = gaf.load_embedding_net(str(tmp_path / 'm'))
    e = gaf.compute_embeddings([X], loaded, mx.cpu(), batch_size=8, normalize=True)
    assert onp.min(onp.sum(e32 * e, axis=1)) > 0.999


def test_the_device_decides_the_precision(monkeypatch):
    monkeypatch.setattr(precision, 'cpu_info', lambda: {'model': 'Old CPU', 'avx512_bf16': False,
                                                        'amx': False})
    dtype, note = precision.amp_dtype([mx.cpu()])
    assert dtype == 'float32' and 'Old CPU' in note and 'neither AVX512-BF16 nor AMX' in note
    monkeypatch.setattr(precision, 'cpu_info', lambda: {'model': 'New CPU', 'avx512_bf16': False,
                                                        'amx': True})
    assert precision.amp_dtype([mx.cpu()]) == ('bfloat16', None)
    assert precision.amp_dtype([mx.gpu(0), mx.gpu(1)]) == ('float16', None)
    # Without bf16 the training runs in float32 and says so in one line.
    monkeypatch.setattr(precision, 'cpu_info', lambda: {'model': 'Old CPU', 'avx512_bf16': False,
                                                        'amx': False})
    net = make_net()
    lines = []
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    gaf.train_ch_facerec(net, [batch()], gluon.loss.SoftmaxCrossEntropyLoss(), trainer, 1,
                         mx.cpu(), amp=True, progress=False, log=lines.append)
    assert compute_dtype_of(net) == 'float32'
    assert sum('training in float32' in str(line) for line in lines) == 1


def test_plain_blocks_refuse_low_precision():
    net = gaf.TrainBlock(18, 16, 4, False, fast=False)
    with pytest.raises(ValueError, match='oneDNN blocks'):
        set_compute_dtype(net, 'bfloat16')
    with pytest.raises(ValueError, match='compute dtype'):
        set_compute_dtype(make_net(), 'int8')


def test_loss_scale_skips_overflowing_steps():
    """float16's dynamic loss scaling (its GPU path is not runnable here; the logic is the
    same on any device): an overflowing step leaves the weights as they were and halves the
    scale; a clean step applies the gradient divided by the scale."""
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.One())
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 1.0},
                            update_on_kvstore=False)
    scale = precision.LossScale(init_scale=8.0)
    x = mnp.ones((1, 3))
    with autograd.record():
        loss = net(x).sum() * scale.scale
    loss.backward()
    assert scale.step(trainer, 1)  # clean: w -= lr * grad / scale = 1 - 1
    onp.testing.assert_allclose(net.weight.data().asnumpy(), onp.zeros((2, 3)))
    before = net.weight.data().asnumpy().copy()
    with autograd.record():
        loss = (net(x) * onp.inf).sum()
    loss.backward()
    assert not scale.step(trainer, 1)
    onp.testing.assert_array_equal(net.weight.data().asnumpy(), before)
    assert scale.scale == 4.0 and scale.skipped == 1
    # After growth_interval clean steps the scale doubles again.
    scale.growth_interval = 2
    for _ in range(2):
        with autograd.record():
            loss = net(x).sum() * scale.scale
        loss.backward()
        assert scale.step(trainer, 1)
    assert scale.scale == 8.0


@needs_bf16
def test_cli_amp_reaches_the_run(tmp_path, synthetic_faces):
    from test_cli import run_train
    root = synthetic_faces(6, 4, 4, 10, 16)
    out = run_train('--data-dir', root, '--val-targets', SYNTHETIC_VAL, '--emb-size', '16',
                    '--batch-size', '8', '--epochs', '1', '--amp', '--no-progress',
                    '--output', str(tmp_path / 'run'), '--num-workers', '1')
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'amp: the backbone computes in bfloat16' in out.stdout
    saved = json.load(open(tmp_path / 'run' / 'config.json'))
    assert saved['settings']['amp'] is True
    assert saved['system']['onednn_amx'] is False  # bfloat16 training keeps AMX off
    state = ckpt.latest_checkpoint(str(tmp_path / 'run' / 'checkpoints'))
    params = mx.npx.load(os.path.join(str(tmp_path / 'run' / 'checkpoints'), state['params']))
    assert {a.dtype for a in params.values()} == {onp.dtype('float32')}
