"""FaceResNet, the margin heads and the chapter's TrainBlock / TestBlock."""
import numpy as onp
import pytest

import mxnet as mx
from mxnet import autograd, gluon, np

import gluon_arcface as gaf
from gluon_arcface.nn.margin import COS_CLIP, NORM_EPS


def n_params(block):
    return sum(p.data().size for p in block.collect_params().values())


@pytest.mark.parametrize('num_layers', [18, 34, 50, 100])
@pytest.mark.parametrize('size', [112, 32])
def test_faceresnet_shapes(num_layers, size):
    net = gaf.get_faceresnet(num_layers, emb_size=64)
    out = net(np.random.uniform(size=(2, 3, size, size)))
    assert out.shape == (2, 64)
    assert out.dtype == onp.float32
    # Four stride-2 stages: the flattened map feeding Dense is 512 x (size/16)^2.
    dense = net.output[-1]
    assert dense.weight.shape == (64, 512 * (size // 16) ** 2)


def test_faceresnet_units_per_stage():
    for depth, units in [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3)), (50, (3, 4, 14, 3)),
                         (100, (3, 13, 30, 3))]:
        net = gaf.get_faceresnet(depth, 32, do_init=False)
        stages = list(net.features)[3:]
        assert tuple(len(s) for s in stages) == units
        assert all(s[0].downsample is not None for s in stages)
        assert all(b.downsample is None for s in stages for b in list(s)[1:])
    with pytest.raises(ValueError, match='18, 34, 50, 100'):
        gaf.get_faceresnet(20, 32)


def test_r18_parameter_count():
    net = gaf.get_faceresnet(18, 256)
    net(np.zeros((1, 3, 112, 112)))
    assert 17.55e6 < n_params(net) < 17.65e6


def test_dropout_only_when_asked():
    with_dropout = gaf.get_faceresnet(18, 32, use_dropout=True, do_init=False)
    without = gaf.get_faceresnet(18, 32, use_dropout=False, do_init=False)
    assert any(isinstance(b, gluon.nn.Dropout) for b in with_dropout.output)
    assert not any(isinstance(b, gluon.nn.Dropout) for b in without.output)


def test_initialiser():
    net = gaf.get_faceresnet(18, 32)
    net(np.zeros((1, 3, 32, 32)))
    params = net.collect_params()
    alphas = [p.data().asnumpy() for n, p in params.items() if n.endswith('alpha')]
    assert alphas and all(onp.allclose(a, 0.25) for a in alphas)
    assert all(a.shape == (a.shape[0],) and a.shape[0] in (64, 128, 256, 512) for a in alphas)
    # Xavier gaussian, factor 'out', magnitude 2: std = sqrt(2 / fan_out), fan_out = C_out * k * k.
    w = net.features[0].weight.data().asnumpy()
    assert abs(w.std() - onp.sqrt(2.0 / (64 * 9))) < 0.01
    unset = gaf.get_faceresnet(18, 32, do_init=False)
    with pytest.raises(RuntimeError):
        unset.features[0].weight.data()


@pytest.mark.parametrize('num_layers', [18, 50])
def test_hybridized_equals_imperative(num_layers):
    net = gaf.get_faceresnet(num_layers, 32)
    x = np.random.uniform(size=(3, 3, 32, 32))
    with autograd.record(train_mode=True):  # batch statistics in BatchNorm
        train_ref = net(x)
    ref = net(x)
    net.hybridize(static_alloc=True, static_shape=True)
    with autograd.record(train_mode=True):
        train_hyb = net(x)
    onp.testing.assert_allclose(net(x).asnumpy(), ref.asnumpy(), rtol=1e-4, atol=1e-4)
    onp.testing.assert_allclose(train_hyb.asnumpy(), train_ref.asnumpy(), rtol=1e-4, atol=1e-4)


def reference_logits(x, w, y, s, m, a, b):
    """NumPy formula of the combined margin: s * cos, target cos(a*theta+m)-b."""
    xn = x / (onp.linalg.norm(x, axis=1, keepdims=True) + NORM_EPS)
    wn = w / (onp.linalg.norm(w, axis=1, keepdims=True) + NORM_EPS)
    cos = xn @ wn.T
    out = cos.copy()
    rows = onp.arange(len(y))
    theta = onp.arccos(onp.clip(cos[rows, y], -COS_CLIP, COS_CLIP))
    out[rows, y] = onp.cos(a * theta + m) - b
    return s * out


@pytest.mark.parametrize('margins', [
    dict(margin_a=1.0, margin_m=0.5, margin_b=0.0),    # ArcFace
    dict(margin_a=1.0, margin_m=0.0, margin_b=0.35),   # CosFace
    dict(margin_a=1.35, margin_m=0.0, margin_b=0.0),   # SphereFace
    dict(margin_a=1.0, margin_m=0.3, margin_b=0.2),    # combined
    dict(margin_a=0.9, margin_m=0.4, margin_b=0.15),   # combined, all three
])
@pytest.mark.parametrize('hybridize', [False, True])
def test_arcmargin_matches_formula(margins, hybridize):
    block = gaf.ArcMarginBlock(16, 10, margin_s=30.0, **margins)
    if hybridize:
        block.hybridize()
    x = onp.random.randn(8, 16).astype('float32')
    y = onp.random.randint(0, 10, size=8)
    out = block(np.array(x), np.array(y)).asnumpy()
    w = block.fc7_weight.data().asnumpy()
    ref = reference_logits(x, w, y, 30.0, margins['margin_m'], margins['margin_a'],
                           margins['margin_b'])
    onp.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    # Only the target column moves away from s*cos.
    plain = 30.0 * reference_logits(x, w, y, 1.0, 0.0, 1.0, 0.0)
    changed = ~onp.isclose(out, plain, atol=1e-3)
    assert changed.sum() <= len(y) and not changed[onp.arange(10)[None, :] != y[:, None]].any()


def test_presets_and_defaults():
    block = gaf.ArcMarginBlock(8, 4)
    assert (block.margin_s, block.margin_m, block.margin_a, block.margin_b) == (64.0, 0.5, 1.0, 0.0)
    assert gaf.MARGIN_PRESETS['cosface']['margin_b'] == 0.35
    assert gaf.MARGIN_PRESETS['sphereface']['margin_a'] == 1.35
    w = block.fc7_weight.data().asnumpy()
    assert w.shape == (4, 8) and 0.005 < w.std() < 0.02


@pytest.mark.parametrize('margins', list(gaf.MARGIN_PRESETS.values()))
@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_no_nan_at_cos_plus_minus_one(margins, sign):
    """Embeddings exactly on (or opposite to) their class centre: cos = +-1."""
    block = gaf.ArcMarginBlock(4, 3, **margins)
    # Large norms make the +1e-5 of the normalisation vanish in float32: cos is exactly +-1.
    w = onp.eye(3, 4, dtype='float32') * 1e6
    block.fc7_weight.set_data(np.array(w))
    x = np.array(sign * w)
    y = np.array([0, 1, 2])
    x.attach_grad()
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record():
        logits = block(x, y)
        loss = loss_fn(logits, y)
    loss.backward()
    cos = block.cosine(mx.nd, x, block.fc7_weight.data()).asnumpy()
    assert (onp.abs(cos[onp.arange(3), [0, 1, 2]]) == 1.0).all()
    assert onp.isfinite(logits.asnumpy()).all()
    assert onp.isfinite(loss.asnumpy()).all()
    assert onp.isfinite(x.grad.asnumpy()).all()
    assert onp.isfinite(block.fc7_weight.grad().asnumpy()).all()


def test_softmax_block_is_plain_fc():
    block = gaf.SoftmaxBlock(6, 5)
    block.fc7_bias.set_data(np.arange(5).astype('float32'))
    x = onp.random.randn(4, 6).astype('float32')
    out = block(np.array(x), np.array([0, 1, 2, 3])).asnumpy()
    w = block.fc7_weight.data().asnumpy()
    onp.testing.assert_allclose(out, x @ w.T + onp.arange(5), rtol=1e-5, atol=1e-5)


def test_trainblock_standardises_per_batch():
    net = gaf.TrainBlock(18, 32, 7, use_dropout=False)
    x = np.random.uniform(size=(6, 3, 32, 32))
    y = np.array([0, 1, 2, 3, 4, 5])
    feat = net.feat_net(x).asnumpy()
    z = (feat - feat.mean(0)) / onp.sqrt(feat.var(0) + 2e-5)
    ref = net.margin_block(np.array(z), y).asnumpy()
    onp.testing.assert_allclose(net(x, y).asnumpy(), ref, rtol=1e-3, atol=1e-3)
    net.hybridize()
    onp.testing.assert_allclose(net(x, y).asnumpy(), ref, rtol=1e-3, atol=1e-3)
    assert isinstance(gaf.TrainBlock(18, 32, 7, False, head=gaf.SoftmaxBlock(32, 7)).margin_block,
                      gaf.SoftmaxBlock)


def test_testblock_shares_trainblock_parameters():
    net = gaf.TrainBlock(18, 32, 5, use_dropout=True)
    test_net = gaf.TestBlock(18, 32, True, params=net.collect_params())
    x = np.random.uniform(size=(4, 3, 32, 32))
    y = np.array([0, 1, 2, 3])
    before = test_net(x).asnumpy()
    onp.testing.assert_allclose(before, net.feat_net(x).asnumpy(), rtol=1e-5)
    feat_names = set(net.feat_net.collect_params().keys())
    assert set(test_net.collect_params().keys()) == feat_names
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x, y), y)
    loss.backward()
    trainer.step(4)
    after = test_net(x).asnumpy()
    assert not onp.allclose(after, before)  # the update shows in the TestBlock
    onp.testing.assert_allclose(after, net.feat_net(x).asnumpy(), rtol=1e-5)


def test_sgd_steps_lower_the_loss():
    net = gaf.TrainBlock(18, 32, 4, use_dropout=False)
    net.hybridize()
    x = np.random.uniform(size=(8, 3, 32, 32))
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'wd': 5e-4})
    losses = []
    for _ in range(6):
        with autograd.record():
            loss = loss_fn(net(x, y), y)
        loss.backward()
        trainer.step(8)
        losses.append(float(loss.mean()))
    assert all(onp.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_context_placement():
    """A TrainBlock on two devices computes on the device of its input, with that device's
    copy of the parameters: both copies give the same logits, and the gradients land on the
    device that computed them only."""
    ctx = [mx.cpu(0), mx.cpu(1)]
    net = gaf.TrainBlock(18, 16, 3, use_dropout=False)
    net.collect_params().reset_ctx(ctx)
    x = np.random.uniform(size=(2, 3, 32, 32))
    y = np.array([0, 1])
    outs = []
    for c in ctx:
        with autograd.record():
            out = net(x.as_in_ctx(c), y.as_in_ctx(c))
        out.backward()
        assert out.ctx == c
        outs.append(out.asnumpy())
    onp.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for param in net.collect_params().values():
        assert set(param.list_ctx()) == set(ctx), param.name
    weight = net.margin_block.fc7_weight
    assert weight.grad(mx.cpu(1)).ctx == mx.cpu(1)
    onp.testing.assert_allclose(weight.grad(mx.cpu(0)).asnumpy(), weight.grad(mx.cpu(1)).asnumpy(),
                                rtol=1e-4, atol=1e-6)
