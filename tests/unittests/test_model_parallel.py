"""The model-parallel head: fc7 split over devices gives the single head's loss and gradients."""
import numpy as onp
import pytest

import mxnet as mx
from mxnet import gluon, np
from mxnet.gluon import nn

import gluon_arcface as gaf
from gluon_arcface import parallel, recipe
from gluon_arcface.train.training import forward_backward

CTX2 = [mx.cpu(0), mx.cpu(1)]
CLASSES, EMB = 7, 16


def batch(n=8, size=16, seed=0):
    rng = onp.random.RandomState(seed)
    X = np.array(rng.uniform(size=(n, 3, size, size)).astype('float32'))
    y = np.array((onp.arange(n) * 3) % CLASSES, dtype='int32')  # targets on both devices
    return X, y


def grads(block, prefix=''):
    """Gradients summed over devices, by structural name."""
    return {prefix + name: sum(g.asnumpy() for g in p.list_grad())
            for name, p in block._collect_params_with_prefix().items() if p.grad_req != 'null'}


def assert_grads_equal(got, want):
    """Equal up to float32 rounding: relative to each tensor's largest gradient, and to the
    network's (some BatchNorm shifts have a true gradient of zero, computed as noise)."""
    assert got.keys() == want.keys()
    scale = max(onp.abs(g).max() for g in want.values())
    for name in want:
        atol = 1e-5 * onp.abs(want[name]).max() + 1e-7 * scale + 1e-7
        onp.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=atol, err_msg=name)


def model_parallel_copy(train_block, path, ctx=CTX2, margin=None):
    """A FeatBlock + per-device heads holding ``train_block``'s parameters (via a checkpoint)."""
    train_block.save_parameters(path)
    feat = parallel.FeatBlock(18, EMB, use_dropout=False)
    feat.collect_params().reset_ctx(ctx)
    heads = parallel.split_head(EMB, CLASSES, ctx, margin)
    model = parallel.ModelParallelNet(feat, heads)
    model.load_parameters(path)
    return model


def train_block(ctx=CTX2, margin=None, seed=0):
    mx.random.seed(seed)
    net = gaf.TrainBlock(18, EMB, CLASSES, use_dropout=False, margin=margin)
    net(*batch(2))  # finish deferred initialisation
    net.collect_params().reset_ctx(ctx)
    return net


def test_same_loss_gradients_and_predictions_as_the_single_head(tmp_path):
    X, y = batch()
    ref = train_block()
    model = model_parallel_copy(ref, str(tmp_path / 'ref.params'))
    losses, outs, ys = forward_backward(ref, gluon.loss.SoftmaxCrossEntropyLoss(), X, y, CTX2)
    loss, pred = model.forward_backward(X, y, CTX2)

    onp.testing.assert_allclose(loss.asnumpy(), onp.concatenate([l.asnumpy() for l in losses]),
                                rtol=1e-5)
    assert (pred.asnumpy() == onp.concatenate([o.argmax(axis=1).asnumpy() for o in outs])).all()
    got = grads(model.net)
    got['margin_block.fc7_weight'] = onp.concatenate(
        [h.fc7_weight.grad().asnumpy() for h in model.cls_nets])
    want = grads(ref)
    assert len(want) > 50  # the whole backbone, not just the head
    assert_grads_equal(got, want)


def test_each_device_holds_only_its_class_range():
    heads = parallel.split_head(EMB, CLASSES, CTX2)
    assert [h.fc7_weight.shape for h in heads] == [(4, EMB), (3, EMB)]
    assert [h.fc7_weight.list_ctx() for h in heads] == [[mx.cpu(0)], [mx.cpu(1)]]
    model = parallel.ModelParallelNet(parallel.FeatBlock(18, EMB, False), heads)
    assert model.offsets == [0, 4] and model.num_classes == CLASSES
    assert not [n for n in model.net.collect_params() if 'fc7' in n]
    assert parallel.class_ranges(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with pytest.raises(ValueError, match='1 to 3 devices'):
        parallel.class_ranges(3, 4)
    both = gaf.ArcMarginBlock(EMB, 3)
    both.collect_params().reset_ctx(CTX2)
    with pytest.raises(ValueError, match=r'cls_nets\[1\].*expected one context'):
        parallel.ModelParallelNet(parallel.FeatBlock(18, EMB, False), [heads[0], both])


class TinyBackbone(nn.HybridBlock):
    """Dense (input size inferred) + BatchNorm: embeddings with gradients, fast and well
    conditioned (a FaceResNet on 16x16 images amplifies float rounding a hundredfold per step)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.dense = nn.Dense(EMB)
            self.bn = nn.BatchNorm(in_channels=EMB)

    def hybrid_forward(self, F, x):
        return self.bn(self.dense(x))


class TinyFeat(nn.HybridBlock):
    """Like FeatBlock: ``net(x) -> embeddings``, the backbone in ``feat_net``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.feat_net = TinyBackbone()

    def hybrid_forward(self, F, x):
        return self.feat_net(x)


class TinyTrain(nn.HybridBlock):
    """Like TrainBlock: ``feat_net`` and one unsplit ``margin_block``, ``net(X, y) -> logits``."""

    def __init__(self, head, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.feat_net = TinyBackbone()
        self.margin_block = head

    def hybrid_forward(self, F, x, y):
        return self.margin_block(self.feat_net(x), y)


def tiny_pair(tmp_path, margin=None, seed=1):
    """A TinyTrain on CTX2 and a model-parallel copy of it (TinyFeat + split head)."""
    mx.random.seed(seed)
    head = gaf.SoftmaxBlock(EMB, CLASSES) if margin is None else \
        gaf.ArcMarginBlock(EMB, CLASSES, **margin)
    ref = TinyTrain(head)
    ref.feat_net.initialize(mx.init.Xavier())
    ref(*batch(2))
    ref.collect_params().reset_ctx(CTX2)
    path = str(tmp_path / 'tiny.params')
    ref.save_parameters(path)
    feat = TinyFeat()
    feat.initialize(ctx=CTX2)
    model = parallel.ModelParallelNet(
        feat, parallel.split_head(EMB, CLASSES, CTX2, margin, softmax=margin is None))
    model.load_parameters(path)
    return ref, model


def head_grads(model):
    names = model.cls_nets[0]._collect_params_with_prefix()
    return {'margin_block.' + n: onp.concatenate(
        [h._collect_params_with_prefix()[n].grad().asnumpy() for h in model.cls_nets])
        for n, p in names.items() if p.grad_req != 'null'}


@pytest.mark.parametrize('loss', ['arcface', 'cosface', 'sphereface', 'softmax'])
def test_margin_presets(tmp_path, loss):
    X, y = batch()
    ref, model = tiny_pair(tmp_path, gaf.margin.margin_settings(loss))
    losses, _, _ = forward_backward(ref, gluon.loss.SoftmaxCrossEntropyLoss(), X, y, CTX2)
    loss_mp, _ = model.forward_backward(X, y, CTX2)
    onp.testing.assert_allclose(loss_mp.asnumpy(), onp.concatenate([l.asnumpy() for l in losses]),
                                rtol=1e-5, atol=1e-5)
    got = grads(model.net)
    got.update(head_grads(model))
    assert_grads_equal(got, grads(ref))


def loader(n=64, size=16, batch_size=16):
    rng = onp.random.RandomState(0)
    y = onp.arange(n) % CLASSES
    X = (rng.uniform(size=(n, 3, size, size)) + 0.2 * y[:, None, None, None]).astype('float32')
    return gluon.data.DataLoader(gluon.data.ArrayDataset(X, y.astype('int32')),
                                 batch_size=batch_size, shuffle=False, last_batch='discard')


def params(block):
    return {n: p.data(mx.cpu(0)).asnumpy() for n, p in block._collect_params_with_prefix().items()}


def test_training_matches_the_single_head_and_resumes(tmp_path):
    """train_ch_facerec_parall (the sibling chapter's call) trains as train_ch_facerec does on
    the unsplit network; its checkpoints load into that network; a resumed run ends exactly as
    an uninterrupted one (parameters and optimizer states of every device)."""
    margin = gaf.margin.margin_settings('arcface')
    ref, model = tiny_pair(tmp_path, margin)
    trainer = gluon.Trainer(ref.collect_params(), 'sgd',
                            {'learning_rate': 0.1, 'wd': 5e-4, 'momentum': 0.9})
    hist_ref = gaf.train_ch_facerec(ref, loader(), gluon.loss.SoftmaxCrossEntropyLoss(), trainer,
                                    2, CTX2, lr_steps=[1], progress=False)
    hist = parallel.train_ch_facerec_parall(model.net, model.cls_nets, loader(), 2, CTX2,
                                            lr_steps=[1], progress=False)
    # ArcFace's s = 64 makes training amplify float rounding (a 1e-7 change of the initial
    # parameters moves the second epoch's loss by 1e-4): equal up to that.
    assert hist['epochs'][0]['loss'] == pytest.approx(hist_ref['epochs'][0]['loss'], rel=1e-5)
    assert hist['epochs'][1]['loss'] == pytest.approx(hist_ref['epochs'][1]['loss'], rel=3e-3)
    assert hist['epochs'][1]['loss'] < hist['epochs'][0]['loss'] - 1

    _, first = tiny_pair(tmp_path, margin)
    parallel.train_ch_facerec_parall(first.net, first.cls_nets, loader(), 1, CTX2, lr_steps=[1],
                                     checkpoint_dir=str(tmp_path / 'ck'), progress=False)
    _, resumed = tiny_pair(tmp_path, margin, seed=5)
    hist_resumed = parallel.train_ch_facerec_parall(
        resumed.net, resumed.cls_nets, loader(), 2, CTX2, lr_steps=[1],
        checkpoint_dir=str(tmp_path / 'ck'), resume=True, progress=False)
    assert [r['lr'] for r in hist_resumed['epochs']] == pytest.approx([0.1, 0.01])
    assert hist_resumed['epochs'][1]['loss'] == pytest.approx(hist['epochs'][1]['loss'],
                                                              rel=1e-6)

    # The checkpoint is the unsplit network's, fc7 gathered in class order.
    final, _ = tiny_pair(tmp_path, margin, seed=6)
    final.load_parameters(str(tmp_path / 'ck' / 'epoch-0002.params'), ctx=CTX2)
    want = params(resumed.net)
    want['margin_block.fc7_weight'] = onp.concatenate(
        [h.fc7_weight.data().asnumpy() for h in resumed.cls_nets])
    for name in gaf.margin.HEAD_STATE:  # the head's state, the same in every block
        want['margin_block.' + name] = getattr(resumed.cls_nets[1], name).data().asnumpy()
    got = params(final)
    assert got.keys() == want.keys()
    for name in want:
        onp.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_recipe_model_parallel_run(tmp_path, make_tiny_rec):
    """train.py --model-parallel: a run folder whose model verifies and whose checkpoint is a
    TrainBlock's."""
    data = tmp_path / 'data'
    data.mkdir()
    samples = make_tiny_rec(data, 4)
    gaf.write_bin(str(data / 'val.bin'), [b for _, b in samples[:20]], [True, False] * 5)
    metrics = recipe.fit(output=str(tmp_path / 'run'), data_dir=str(data), val_targets=['val'],
                         num_layers=18, emb_size=EMB, batch_size=16, epochs=1,
                         ctx='cpu:0,cpu:1', model_parallel=True, progress=False)
    assert 0.0 <= metrics['verification']['val']['accuracy'] <= 1.0
    net = gaf.TrainBlock(18, EMB, 4, use_dropout=True)
    net.load_parameters(str(tmp_path / 'run' / 'checkpoints' / 'epoch-0001.params'))
    assert net.margin_block.fc7_weight.shape == (4, EMB)
    assert (tmp_path / 'run' / 'model' / 'faceresnet18-symbol.json').is_file()
