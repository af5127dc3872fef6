"""train_ch_facerec: data parallelism, learning-rate steps, checkpoints, resume, faults."""
import errno
import json
import os
import shutil
import signal

import numpy as onp
import pytest

import mxnet as mx
from mxnet import autograd, gluon, np

import gluon_arcface as gaf
from gluon_arcface import checkpoint as ckpt
from gluon_arcface.runtime.errors import CheckpointError, TrainingDivergedError
from gluon_arcface.train.training import forward_backward, sync_aux_states

CTX2 = [mx.cpu(0), mx.cpu(1)]


def tiny_loader(n=32, classes=4, size=16, batch_size=8, seed=0):
    rng = onp.random.RandomState(seed)
    X = rng.uniform(size=(n, 3, size, size)).astype('float32')
    y = onp.arange(n) % classes
    X += y[:, None, None, None] * 0.3  # a learnable class signal
    return gluon.data.DataLoader(gluon.data.ArrayDataset(X, y.astype('int32')),
                                 batch_size=batch_size, shuffle=False, last_batch='discard')


def make_net(ctx, classes=4, seed=0):
    mx.random.seed(seed)
    net = gaf.TrainBlock(18, 16, classes, use_dropout=False)
    net(np.zeros((2, 3, 16, 16)), np.array([0, 1]))  # finish deferred initialisation
    net.collect_params().reset_ctx(ctx)
    return net


def grads(net):
    """Gradients summed over devices, by structural parameter name."""
    out = {}
    for name, p in net._collect_params_with_prefix().items():
        if p.grad_req != 'null':
            out[name] = sum(g.asnumpy() for g in p.list_grad())
    return out


def test_data_parallel_matches_per_shard_reference(tmp_path):
    """Two CPU devices == the same two shards run one after the other on one device, summed."""
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    X, y = next(iter(tiny_loader(batch_size=8)))
    par = make_net(CTX2)
    par.save_parameters(str(tmp_path / 'init.params'))
    ref = make_net([mx.cpu(0)], seed=1)
    ref.load_parameters(str(tmp_path / 'init.params'), ctx=mx.cpu(0))

    losses, _, _ = forward_backward(par, loss, X, y, CTX2)
    par_loss = sum(float(l.sum()) for l in losses)

    for p in ref.collect_params().values():
        if p.grad_req != 'null':
            p.grad_req = 'add'
    ref.collect_params().zero_grad()
    ref_loss = 0.0
    for lo, hi in [(0, 4), (4, 8)]:  # split_and_load's shards
        with autograd.record():
            l = loss(ref(X[lo:hi], y[lo:hi]), y[lo:hi])
        l.backward()
        ref_loss += float(l.sum())
    assert par_loss == pytest.approx(ref_loss, rel=1e-5)
    g_par, g_ref = grads(par), grads(ref)
    assert g_par.keys() == g_ref.keys() and len(g_par) > 50
    for name in g_par:
        onp.testing.assert_allclose(g_par[name], g_ref[name], rtol=1e-3, atol=1e-5, err_msg=name)

    # The plain one-device run on the whole batch is different (per-shard batch statistics).
    whole = make_net([mx.cpu(0)], seed=2)
    whole.load_parameters(str(tmp_path / 'init.params'), ctx=mx.cpu(0))
    with autograd.record():
        l = loss(whole(X, y), y)
    assert float(l.sum()) != pytest.approx(ref_loss, rel=1e-3)


def test_devices_share_running_statistics_after_an_epoch():
    net = make_net(CTX2)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.05})
    gaf.train_ch_facerec(net, tiny_loader(), gluon.loss.SoftmaxCrossEntropyLoss(), trainer, 1,
                         CTX2, progress=False, log=lambda *a: None)
    for name, p in net.collect_params().items():
        if 'running' in name:
            a, b = p.list_data()
            onp.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    sync_aux_states(net)  # idempotent


def test_chapter_call_trains_and_reports():
    net = make_net(CTX2)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'wd': 5e-4})
    lines = []
    history = gaf.train_ch_facerec(net, tiny_loader(), gluon.loss.SoftmaxCrossEntropyLoss(),
                                   trainer, 3, CTX2, progress=False, log=lines.append)
    epochs = history['epochs']
    assert [e['epoch'] for e in epochs] == [1, 2, 3]
    assert all(e['samples_per_sec'] > 0 and e['seconds'] > 0 for e in epochs)
    assert epochs[-1]['loss'] < epochs[0]['loss']
    assert len(lines) == 3 and 'samples/s' in lines[0] and 'train acc' in lines[0]


def test_lr_steps():
    assert gaf.lr_at_epoch(0.1, 0, [2, 4]) == 0.1
    assert gaf.lr_at_epoch(0.1, 2, [2, 4]) == pytest.approx(0.01)
    assert gaf.lr_at_epoch(0.1, 5, [2, 4]) == pytest.approx(0.001)
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    history = gaf.train_ch_facerec(net, tiny_loader(n=16), gluon.loss.SoftmaxCrossEntropyLoss(),
                                   trainer, 3, mx.cpu(0), lr_steps=[1, 2], progress=False,
                                   log=lambda *a: None)
    assert [e['lr'] for e in history['epochs']] == pytest.approx([0.1, 0.01, 0.001])


def params_of(net):
    return {k: v.data().asnumpy().copy() for k, v in net._collect_params_with_prefix().items()}


def test_resume_continues_from_the_saved_epoch(tmp_path):
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    folder = str(tmp_path / 'ckpt')
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9})
    gaf.train_ch_facerec(net, tiny_loader(), loss, trainer, 2, mx.cpu(0), lr_steps=[1],
                         checkpoint_dir=folder, progress=False, log=lambda *a: None)
    state = ckpt.latest_checkpoint(folder)
    assert state['epoch'] == 2 and len(state['history']['epochs']) == 2
    shutil.copytree(folder, str(tmp_path / 'copy'))  # for the uninterrupted run below

    # A fresh process would build a new network and trainer, then resume.
    net2 = make_net([mx.cpu(0)], seed=5)
    trainer2 = gluon.Trainer(net2.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9})
    lines = []
    history = gaf.train_ch_facerec(net2, tiny_loader(), loss, trainer2, 2, mx.cpu(0),
                                   lr_steps=[1], checkpoint_dir=folder, resume=True,
                                   progress=False, log=lines.append)
    assert [e['epoch'] for e in history['epochs']] == [1, 2]  # nothing left to do
    assert 'resumed' in lines[0] and 'after epoch 2' in lines[0]
    for k, v in params_of(net).items():
        onp.testing.assert_allclose(params_of(net2)[k], v, rtol=1e-6, err_msg=k)
    # Momentum buffers came back too: one more epoch on both gives the same parameters.
    history = gaf.train_ch_facerec(net2, tiny_loader(), loss, trainer2, 3, mx.cpu(0),
                                   lr_steps=[1], checkpoint_dir=folder, resume=True,
                                   progress=False, log=lambda *a: None)
    assert [e['epoch'] for e in history['epochs']] == [1, 2, 3]
    assert history['epochs'][2]['lr'] == pytest.approx(0.01)
    # The first network goes on from its own checkpoint ('auto' resumes where there is one).
    reference = gaf.train_ch_facerec(net, tiny_loader(), loss, trainer, 3, mx.cpu(0),
                                     lr_steps=[1], checkpoint_dir=str(tmp_path / 'copy'),
                                     resume='auto', progress=False, log=lambda *a: None)
    assert [e['epoch'] for e in reference['epochs']] == [1, 2, 3]
    assert reference['epochs'][2]['loss'] == pytest.approx(history['epochs'][2]['loss'],
                                                           rel=1e-5)
    for k, v in params_of(net).items():
        onp.testing.assert_allclose(params_of(net2)[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # 'auto' without a checkpoint starts from the beginning.
    fresh = make_net([mx.cpu(0)], seed=7)
    trainer3 = gluon.Trainer(fresh.collect_params(), 'sgd', {'learning_rate': 0.1})
    history = gaf.train_ch_facerec(fresh, tiny_loader(), loss, trainer3, 1, mx.cpu(0),
                                   checkpoint_dir=str(tmp_path / 'empty'), resume='auto',
                                   progress=False, log=lambda *a: None)
    assert [e['epoch'] for e in history['epochs']] == [1]
    assert ckpt.latest_checkpoint(str(tmp_path / 'empty'))['epoch'] == 1


def test_resume_without_checkpoint_is_an_error(tmp_path):
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    with pytest.raises(CheckpointError, match='no checkpoint'):
        gaf.train_ch_facerec(net, tiny_loader(), gluon.loss.SoftmaxCrossEntropyLoss(), trainer,
                             1, mx.cpu(0), checkpoint_dir=str(tmp_path), resume=True,
                             progress=False)


def test_checkpoint_of_another_network_is_refused(tmp_path):
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    ckpt.save_checkpoint(str(tmp_path), 1, net, trainer)
    other = make_net([mx.cpu(0)], classes=7)
    with pytest.raises(CheckpointError, match='does not fit this network'):
        ckpt.load_checkpoint(str(tmp_path), other)


class NanAfter:
    """A loss that turns NaN from its ``n``-th call on."""

    def __init__(self, n):
        self.n, self.calls, self.loss = n, 0, gluon.loss.SoftmaxCrossEntropyLoss()

    def __call__(self, out, y):
        self.calls += 1
        value = self.loss(out, y)
        return value * float('nan') if self.calls >= self.n else value


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    folder = str(tmp_path)
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    # 4 batches an epoch: the loss turns NaN in the second batch of epoch 2.
    with pytest.raises(TrainingDivergedError, match=r'epoch 2, batch 2.*not applied.*last good'):
        gaf.train_ch_facerec(net, tiny_loader(), NanAfter(6), trainer, 3, mx.cpu(0),
                             checkpoint_dir=folder, progress=False, log=lambda *a: None)
    assert ckpt.latest_checkpoint(folder)['epoch'] == 1
    after_nan = params_of(net)
    assert all(onp.isfinite(v).all() for v in after_nan.values())  # the NaN step was not applied
    restored = make_net([mx.cpu(0)], seed=3)
    ckpt.load_checkpoint(folder, restored)
    assert all(onp.isfinite(v).all() for v in params_of(restored).values())


def test_interrupt_saves_a_checkpoint_and_resumes(tmp_path):
    folder = str(tmp_path)
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})

    def interrupted(loader, at):
        for i, batch in enumerate(loader):
            if i == at:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
            yield batch

    class Loader:
        def __init__(self):
            self.epoch = 0

        def __iter__(self):
            self.epoch += 1
            return interrupted(tiny_loader(), 2 if self.epoch == 2 else -1)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        gaf.train_ch_facerec(net, Loader(), gluon.loss.SoftmaxCrossEntropyLoss(), trainer, 3,
                             mx.cpu(0), checkpoint_dir=folder, progress=False,
                             log=lambda *a: None)
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    state = ckpt.latest_checkpoint(folder)
    assert state['epoch'] == 1  # epoch 2 was incomplete: a resume redoes it
    saved = make_net([mx.cpu(0)], seed=4)
    ckpt.load_checkpoint(folder, saved)
    for k, v in params_of(net).items():  # ... starting from the parameters trained so far
        onp.testing.assert_array_equal(params_of(saved)[k], v)
    history = gaf.train_ch_facerec(saved, tiny_loader(), gluon.loss.SoftmaxCrossEntropyLoss(),
                                   gluon.Trainer(saved.collect_params(), 'sgd',
                                                 {'learning_rate': 0.1}),
                                   3, mx.cpu(0), checkpoint_dir=folder, resume=True,
                                   progress=False, log=lambda *a: None)
    assert [e['epoch'] for e in history['epochs']] == [1, 2, 3]


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, monkeypatch):
    folder = str(tmp_path)
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    ckpt.save_checkpoint(folder, 1, net, trainer)
    good = params_of(net)
    before = sorted(os.listdir(folder))

    def disk_full(self, path, *args, **kwargs):
        with open(path, 'wb') as f:
            f.write(b'\0' * 100)  # a partial file ...
        raise OSError(errno.ENOSPC, 'No space left on device')  # ... then the disk is full

    for p in net.collect_params().values():
        p.set_data(p.data() + 1)
    monkeypatch.setattr(gaf.TrainBlock, 'save_parameters', disk_full)
    with pytest.raises(OSError, match='No space left'):
        ckpt.save_checkpoint(folder, 2, net, trainer)
    assert sorted(os.listdir(folder)) == before  # no partial file, checkpoint.json unchanged
    assert json.load(open(os.path.join(folder, 'checkpoint.json')))['epoch'] == 1
    restored = make_net([mx.cpu(0)], seed=6)
    ckpt.load_checkpoint(folder, restored, gluon.Trainer(restored.collect_params(), 'sgd',
                                                         {'learning_rate': 0.1}))
    for k, v in good.items():
        onp.testing.assert_array_equal(params_of(restored)[k], v)


def test_keep_last_prunes_old_epochs(tmp_path):
    net = make_net([mx.cpu(0)])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    for epoch in range(1, 5):
        ckpt.save_checkpoint(str(tmp_path), epoch, net, trainer, keep_last=2)
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.params')) == [
        'epoch-0003.params', 'epoch-0004.params']
