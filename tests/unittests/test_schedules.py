"""What changes during training, step by step: learning rate, margin ramp, backbone freezing;
and that train_ch_facerec applies them before every step without rebuilding the graph."""
import math

import numpy as onp
import pytest

import mxnet as mx
from mxnet import gluon

import gluon_arcface as gaf
from gluon_arcface.nn.margin import head_state
from gluon_arcface.train.schedules import TrainSchedule, backbone_params


def test_step_schedule_is_the_chapters():
    s = TrainSchedule(0.1, 6, lr_steps=(2, 4))
    assert [s.lr(e) for e in (0, 1.5, 2, 3.9, 4, 5.99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert gaf.lr_at_epoch(0.1, 4, [2, 4]) == pytest.approx(0.001)


def test_linear_warmup_then_cosine():
    s = TrainSchedule(0.2, 10, lr_schedule='cosine', warmup_epochs=2)
    steps = 5
    assert s.lr(0, steps) == pytest.approx(0.2 / (2 * steps))  # the first step's share
    assert s.lr(1, steps) == pytest.approx(0.1)
    assert s.lr(2, steps) == pytest.approx(0.2)  # warm-up done: the top of the cosine
    assert s.lr(6, steps) == pytest.approx(0.1)  # half way through the decay
    assert s.lr(10, steps) == pytest.approx(0.0, abs=1e-12)
    values = [s.lr(2 + 8 * i / 100, steps) for i in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decays monotonically


def test_warmup_with_steps():
    s = TrainSchedule(0.1, 5, lr_steps=(3,), warmup_epochs=1)
    assert s.lr(0.5, 10) == pytest.approx(0.05)
    assert s.lr(2, 10) == pytest.approx(0.1) and s.lr(3, 10) == pytest.approx(0.01)


def test_margin_ramp_values():
    s = TrainSchedule(0.1, 10, margin_hold=1, margin_warmup=2)
    assert [s.margin_ramp(p) for p in (0, 0.5, 0.99, 1, 1.5, 2, 2.5, 3, 7)] == pytest.approx(
        [0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1])
    assert TrainSchedule(0.1, 3).margin_ramp(0) == 1.0  # the chapter: full margin at once


def test_backbone_multiplier():
    s = TrainSchedule(0.1, 5, freeze_epochs=2, backbone_lr_mult=0.1)
    assert [s.backbone_mult(p) for p in (0, 1.9, 2, 4)] == [0, 0, 0.1, 0.1]


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match='lr_schedule'):
        TrainSchedule(0.1, 5, lr_schedule='linear')
    with pytest.raises(ValueError, match='margin_warmup'):
        TrainSchedule(0.1, 5, margin_warmup=-1)


class Recorder:
    """A batch_step that records the head's state and the LR before delegating."""

    def __init__(self, net, trainer, loss, ctx):
        self.net, self.trainer, self.loss, self.ctx = net, trainer, loss, ctx
        self.seen, self.cached_ops = [], set()

    def __call__(self, X, y):
        state = head_state(self.net)
        self.seen.append((self.trainer.learning_rate, state['margin_ramp'],
                          [p.lr_mult for p in backbone_params(self.net)][0]))
        out = gaf.data_parallel_step(self.net, self.loss, self.ctx, X, y)
        self.cached_ops.add(id(self.net._cached_op))
        return out


def tiny_loader(n=48, batch=8, size=16, classes=4):
    rng = onp.random.RandomState(0)
    y = onp.arange(n) % classes
    X = (rng.uniform(size=(n, 3, size, size)) + 0.2 * y[:, None, None, None]).astype('float32')
    return gluon.data.DataLoader(gluon.data.ArrayDataset(X, y.astype('int32')),
                                 batch_size=batch, shuffle=False, last_batch='discard')


def test_train_ch_facerec_applies_the_schedule_every_step():
    ctx = [mx.cpu()]
    net = gaf.TrainBlock(18, 8, 4, False, margin=dict(margin_s=8.0))
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    schedule = TrainSchedule(0.1, 3, lr_schedule='cosine', warmup_epochs=1, margin_hold=0.5,
                             margin_warmup=1, freeze_epochs=1, backbone_lr_mult=0.5)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    recorder = Recorder(net, trainer, loss, ctx)
    gaf.train_ch_facerec(net, tiny_loader(), loss, trainer, 3, ctx, schedule=schedule,
                         batch_step=recorder, progress=False, log=lambda *a: None)
    steps = 6
    assert len(recorder.seen) == 3 * steps
    for i, (lr, ramp, mult) in enumerate(recorder.seen):
        progress = i / steps
        assert lr == pytest.approx(schedule.lr(progress, steps))
        assert ramp == pytest.approx(schedule.margin_ramp(progress), abs=1e-7)
        assert mult == schedule.backbone_mult(progress)
    assert len(recorder.cached_ops) == 1  # one graph for all the steps: nothing was rebuilt


def test_frozen_backbone_keeps_its_weights():
    ctx = [mx.cpu()]
    net = gaf.TrainBlock(18, 8, 4, False, margin=dict(margin_s=8.0))
    X, y = next(iter(tiny_loader()))
    net(X, y)  # complete the deferred initialisation
    conv = net.feat_net[0].features[0].weight
    before = conv.data().asnumpy().copy()
    head_before = net.margin_block.fc7_weight.data().asnumpy().copy()
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 5e-4})
    gaf.train_ch_facerec(net, tiny_loader(), gluon.loss.SoftmaxCrossEntropyLoss(), trainer, 1,
                         ctx, schedule=TrainSchedule(0.1, 1, freeze_epochs=1), progress=False,
                         log=lambda *a: None)
    onp.testing.assert_array_equal(conv.data().asnumpy(), before)
    assert not onp.allclose(net.margin_block.fc7_weight.data().asnumpy(), head_before)


def test_cosine_reaches_zero_in_history():
    ctx = [mx.cpu()]
    net = gaf.TrainBlock(18, 8, 4, False, margin=dict(margin_s=8.0))
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    history = gaf.train_ch_facerec(net, tiny_loader(), gluon.loss.SoftmaxCrossEntropyLoss(),
                                   trainer, 2, ctx, schedule=TrainSchedule(0.1, 2, 'cosine'),
                                   progress=False, log=lambda *a: None)
    # The last step of epoch 2 runs at progress 2 - 1/6.
    last = 0.1 * 0.5 * (1 + math.cos(math.pi * (2 - 1 / 6) / 2))
    assert history['epochs'][1]['lr'] == pytest.approx(last)


class _FakeKV:
    """The attributes WorkerGroup reads from a dist KVStore."""

    def __init__(self, type_):
        self.type, self.rank, self.num_workers = type_, 0, 2


@pytest.mark.parametrize('settings', [dict(lr_steps=(1,)), dict(lr_schedule='cosine'),
                                      dict(warmup_epochs=0.5), dict(freeze_epochs=1),
                                      dict(backbone_lr_mult=0.1)])
def test_dist_async_refuses_a_schedule_that_changes_the_learning_rate(settings):
    from gluon_arcface.train.distributed import WorkerGroup
    from gluon_arcface.runtime.errors import DistributedError
    schedule = TrainSchedule(0.1, 3, **settings)
    with pytest.raises(DistributedError, match='dist_async'):
        WorkerGroup(_FakeKV('dist_async')).check_schedule(schedule)
    WorkerGroup(_FakeKV('dist_sync')).check_schedule(schedule)  # the workers run the optimizer
    WorkerGroup(None).check_schedule(schedule)
    # A constant learning rate (margin warm-up only) is fine on dist_async.
    WorkerGroup(_FakeKV('dist_async')).check_schedule(TrainSchedule(0.1, 3, margin_warmup=1))
