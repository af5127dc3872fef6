"""The margin head's state: the scale s and the margin ramp, read by the hybridized graph and
written between steps (margin warm-up, AdaCos), on one head, over devices and model parallel."""
import math

import numpy as onp
import pytest

import mxnet as mx
from mxnet import autograd, gluon
from mxnet import np as mnp

import gluon_arcface as gaf
from gluon_arcface import parallel
from gluon_arcface.nn.margin import (adacos_fixed_scale, adacos_scale, head_state,
                                  set_head_state)

CTX2 = [mx.cpu(0), mx.cpu(1)]


def cosines(x, w):
    x = x / (onp.linalg.norm(x, axis=1, keepdims=True) + 1e-5)
    w = w / (onp.linalg.norm(w, axis=1, keepdims=True) + 1e-5)
    return x @ w.T


def head_and_batch(loss='arcface', n=12, classes=7, emb=6, **margin):
    mx.random.seed(3)
    settings = dict(gaf.MARGIN_PRESETS[loss], margin_s=10.0)
    settings.update(margin)
    head = gaf.ArcMarginBlock(emb, classes, **settings)
    rng = onp.random.RandomState(0)
    x = rng.normal(size=(n, emb)).astype('float32')
    y = (onp.arange(n) % classes).astype('int32')
    return head, x, y, settings


def expected_logits(x, y, w, s, a, m, b):
    cos = cosines(x, w)
    theta = onp.arccos(onp.clip(cos[onp.arange(len(y)), y], -1 + 1e-6, 1 - 1e-6))
    out = cos.copy()
    out[onp.arange(len(y)), y] = onp.cos(a * theta + m) - b
    return s * out


def test_fixed_adacos_scale():
    # sqrt(2) ln(C - 1): the figures DESIGN.md quotes.
    assert adacos_fixed_scale(30) == pytest.approx(4.76, abs=0.01)
    assert adacos_fixed_scale(300) == pytest.approx(8.06, abs=0.01)
    assert adacos_fixed_scale(10575) == pytest.approx(13.1, abs=0.05)
    assert adacos_fixed_scale(2) == 1.0  # ln(1) = 0 would switch the logits off
    assert gaf.margin.margin_settings('arcface', 'auto', num_classes=30)['margin_s'] == \
        pytest.approx(math.sqrt(2) * math.log(29))
    dynamic = gaf.margin.margin_settings('cosface', 'adacos', num_classes=30)
    assert dynamic['adaptive_scale'] and dynamic['margin_b'] == 0.35
    with pytest.raises(gaf.ConfigError, match='softmax head has none'):
        gaf.margin.margin_settings('softmax', 'adacos', num_classes=30)


def test_dynamic_adacos_formula():
    others = onp.array([10.0, 30.0])
    assert adacos_scale(others, [0.2, 0.4, 0.3][:2]) == pytest.approx(
        math.log(20.0) / math.cos(0.3))
    # The median angle is capped at pi/4.
    assert adacos_scale(others, [1.2, 1.4]) == pytest.approx(math.log(20.0) / math.cos(math.pi / 4))


@pytest.mark.parametrize('ramp', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('loss', ['arcface', 'cosface', 'sphereface'])
def test_ramp_scales_the_margin_in_the_hybridized_graph(loss, ramp):
    head, x, y, st = head_and_batch(loss)
    head.hybridize(static_alloc=True, static_shape=True)
    head(mnp.array(x), mnp.array(y))  # build the graph with the initial state
    graph = head._cached_op
    set_head_state(head, 'margin_ramp', ramp)
    got = head(mnp.array(x), mnp.array(y)).asnumpy()
    assert head._cached_op is graph  # the same graph read the new value
    a = 1 + ramp * (st['margin_a'] - 1)
    want = expected_logits(x, y, head.fc7_weight.data().asnumpy(), st['margin_s'], a,
                           ramp * st['margin_m'], ramp * st['margin_b'])
    onp.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('loss', ['arcface', 'cosface', 'sphereface'])
@pytest.mark.parametrize('ramp', [1.0, 0.3])
def test_adacos_update_from_the_logits(loss, ramp):
    """update_scale recovers the batch statistics of the paper from the head's own logits."""
    head, x, y, st = head_and_batch(loss, adaptive_scale=True)
    head.hybridize(static_alloc=True, static_shape=True)
    set_head_state(head, 'margin_ramp', ramp)
    with autograd.record():
        logits = head(mnp.array(x), mnp.array(y))
    new = head.update_scale([logits], [mnp.array(y)])
    cos = cosines(x, head.fc7_weight.data().asnumpy())
    mask = onp.ones_like(cos, dtype=bool)
    mask[onp.arange(len(y)), y] = False
    b_avg = onp.mean(onp.sum(onp.exp(st['margin_s'] * cos) * mask, axis=1))
    theta_med = onp.median(onp.arccos(cos[onp.arange(len(y)), y]))
    want = math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))
    assert new == pytest.approx(want, rel=1e-4)
    assert head_state(head)['margin_scale'] == pytest.approx(want, rel=1e-6)
    # The next forward uses it.
    logits = head(mnp.array(x), mnp.array(y)).asnumpy()
    onp.testing.assert_allclose(logits[mask], want * cos[mask], rtol=1e-3, atol=1e-4)


def test_adacos_over_two_devices_and_model_parallel_agree():
    """The data-parallel step (two CPU contexts) and the model-parallel head reach the same
    scale from the same batch, the state equal on every device and every block."""
    from test_model_parallel import batch, tiny_pair  # the shared tiny networks
    margin = gaf.margin.margin_settings('arcface', 'adacos', num_classes=8)
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        import pathlib
        ref, model = tiny_pair(pathlib.Path(folder), margin)
    X, y = batch()
    gaf.data_parallel_step(ref, gluon.loss.SoftmaxCrossEntropyLoss(), CTX2, X, y)
    model.forward_backward(X, y, CTX2)
    s_ref = [float(a.asnumpy()[0]) for a in ref.margin_block.margin_scale.list_data()]
    s_mp = [head_state(block)['margin_scale'] for block in model.cls_nets]
    assert s_ref[0] == pytest.approx(s_ref[1]) and s_mp[0] == pytest.approx(s_mp[1])
    assert s_mp[0] == pytest.approx(s_ref[0], rel=1e-4)
    assert s_ref[0] != pytest.approx(margin['margin_s'])  # it moved


def test_checkpoint_without_head_state_still_loads(tmp_path):
    net = gaf.TrainBlock(18, 8, 4, False, margin=dict(margin_s=8.0))
    net(mnp.ones((2, 3, 16, 16)), mnp.array([0, 1]))
    arrays = {k: v for k, v in
              ((name, p.data()) for name, p in net._collect_params_with_prefix().items())
              if not k.endswith(('margin_scale', 'margin_ramp'))}
    path = str(tmp_path / 'old.params')
    mx.npx.save(path, arrays)  # as written before the head had its state
    other = gaf.TrainBlock(18, 8, 4, False, margin=dict(margin_s=8.0))
    gaf.checkpoint.load_parameters(other, path)
    onp.testing.assert_array_equal(other.margin_block.fc7_weight.data().asnumpy(),
                                   arrays['margin_block.fc7_weight'].asnumpy())
    assert head_state(other) == {'margin_scale': 8.0, 'margin_ramp': 1.0}
    # Anything else missing is still an error.
    del arrays['margin_block.fc7_weight']
    mx.npx.save(path, arrays)
    with pytest.raises(AssertionError, match='fc7_weight'):
        gaf.checkpoint.load_parameters(other, path)
    # A model-parallel head takes the old file too.
    parallel.scatter_head({'margin_block.fc7_weight': mnp.ones((4, 8))},
                          parallel.split_head(8, 4, CTX2, dict(margin_s=8.0)))
