"""The fast paths compute the same function as the plain blocks: the oneDNN-friendly training
blocks (PReLU from depthwise convolutions, legacy elemwise_add) and the inference copy.

No timing here: only outputs, gradients, parameter names and checkpoints.
"""
import numpy as onp
import pytest

import mxnet as mx
from mxnet import autograd, gluon, np
from mxnet.gluon import nn

import gluon_arcface as gaf
from gluon_arcface import benchmark
from gluon_arcface.nn.model import PReLU, inference_net


def _copy_params(src, dst):
    """Copy values by structural name (what save_parameters/load_parameters use)."""
    dst_params = dst._collect_params_with_prefix()
    for name, param in src._collect_params_with_prefix().items():
        dst_params[name].set_data(param.data())


def _randomize(net, seed=0):
    """Slopes of both signs and beyond 1, non-trivial BatchNorm statistics and affine terms."""
    rng = onp.random.RandomState(seed)
    for name, param in sorted(net._collect_params_with_prefix().items()):
        value = param.data().asnumpy()
        if name.endswith('alpha'):
            value = rng.uniform(-0.5, 1.5, size=value.shape)
        elif name.endswith(('running_mean', 'beta')):
            value = rng.normal(0, 0.2, size=value.shape)
        elif name.endswith(('running_var', 'gamma')):
            value = rng.uniform(0.5, 1.5, size=value.shape)
        else:
            continue
        param.set_data(np.array(value.astype('float32')))


def _pair(num_layers=18, emb_size=16, num_classes=10, size=32, use_dropout=False):
    """A plain TrainBlock and a fast one holding the same parameter values."""
    plain = gaf.TrainBlock(num_layers, emb_size, num_classes, use_dropout, fast=False)
    fast = gaf.TrainBlock(num_layers, emb_size, num_classes, use_dropout, fast=True)
    x = np.random.uniform(size=(2, 3, size, size))
    y = np.array([0, 1]).astype('float32')
    for net in (plain, fast):  # infer the Dense input size
        net(x, y)
    _randomize(plain)
    _copy_params(plain, fast)
    return plain, fast


def _train_pass(net, x, y):
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record():
        out = net(x, y)
        total = loss(out, y)
    total.backward()
    grads = {name: p.grad().asnumpy() for name, p in net._collect_params_with_prefix().items()
             if p.grad_req != 'null'}
    aux = {name: p.data().asnumpy() for name, p in net._collect_params_with_prefix().items()
           if p.grad_req == 'null'}
    return out.asnumpy(), grads, aux


def _assert_grads_close(ref, got, rtol=1e-3):
    """Close relative to each gradient's size; gradients that are nearly zero by construction
    (e.g. BatchNorm betas in front of the batch standardisation) relative to the largest."""
    assert ref.keys() == got.keys()
    largest = max(float(onp.abs(v).max()) for v in ref.values())
    for name in ref:
        scale = max(float(onp.abs(ref[name]).max()), 1e-3 * largest)
        onp.testing.assert_allclose(got[name], ref[name], rtol=rtol, atol=rtol * scale,
                                    err_msg=name)


# ----------------------------------------------------------------------------- PReLU


@pytest.mark.parametrize('hybridize', [False, True])
def test_prelu_equals_nn_prelu(hybridize):
    channels = 8
    plain = nn.PReLU(in_channels=channels)
    fast = PReLU(channels)
    plain.initialize()
    fast.initialize()
    alpha = np.array(onp.linspace(-0.75, 1.5, channels).astype('float32'))
    plain.alpha.set_data(alpha)
    fast.alpha.set_data(alpha)
    if hybridize:
        plain.hybridize(static_alloc=True, static_shape=True)
        fast.hybridize(static_alloc=True, static_shape=True)
    x = np.random.normal(size=(3, channels, 5, 7))
    x[0, :, 0, 0] = 0  # the kink: both give slope alpha at x == 0
    head = np.random.normal(size=x.shape)
    results = []
    for block in (plain, fast):
        xg = x.copy()
        xg.attach_grad()
        with autograd.record():
            out = block(xg)
            (out * head).sum().backward()
        results.append((out.asnumpy(), xg.grad.asnumpy(), block.alpha.grad().asnumpy()))
    (o1, dx1, da1), (o2, dx2, da2) = results
    onp.testing.assert_allclose(o2, o1, rtol=1e-5, atol=1e-6)
    onp.testing.assert_allclose(dx2, dx1, rtol=1e-5, atol=1e-6)
    onp.testing.assert_allclose(da2, da1, rtol=1e-4, atol=1e-5)
    # Against the definition too.
    xn, a = x.asnumpy(), alpha.asnumpy()[None, :, None, None]
    onp.testing.assert_allclose(o2, onp.where(xn > 0, xn, a * xn), rtol=1e-5, atol=1e-6)
    onp.testing.assert_allclose(da2, (head.asnumpy() * onp.minimum(xn, 0)).sum(axis=(0, 2, 3)),
                                rtol=1e-4, atol=1e-5)


def test_prelu_same_parameter_as_nn_prelu():
    fast, plain = PReLU(64), nn.PReLU(in_channels=64)
    for block in (fast, plain):  # the same prefix counter: prelu<i>_alpha
        assert block.alpha.name.startswith('prelu') and block.alpha.name.endswith('_alpha')
    assert fast.alpha.shape == plain.alpha.shape == (64,)
    assert list(fast._collect_params_with_prefix()) == ['alpha']
    assert repr(fast) == 'PReLU(64)'


# ----------------------------------------------------------------------------- whole network


def test_parameter_names_unchanged():
    plain = gaf.TrainBlock(18, 16, 10, True, fast=False, prefix='net_')
    fast = gaf.TrainBlock(18, 16, 10, True, fast=True, prefix='net_')
    plain_params = plain._collect_params_with_prefix()
    fast_params = fast._collect_params_with_prefix()
    assert list(plain_params) == list(fast_params)  # save_parameters/load_parameters names
    assert [p.name for p in plain_params.values()] == [p.name for p in fast_params.values()]
    assert [p.shape for p in plain_params.values()] == [p.shape for p in fast_params.values()]
    alphas = [name for name in fast_params if name.endswith('alpha')]
    assert len(alphas) == 9 and alphas[0] == 'feat_net.0.features.2.alpha'


@pytest.mark.parametrize('hybridize', [False, True])
def test_training_outputs_and_gradients_equal_plain(hybridize):
    """Reference: the plain blocks, imperative. (Hybridized nn.PReLU is not a reference: with
    MXNET_MKLDNN_ENABLED=0, MXNet 1.9.1 gets its slope gradients wrong in a hybridized graph.)"""
    plain, fast = _pair()
    if hybridize:
        fast.hybridize(static_alloc=True, static_shape=True)
    x = np.random.uniform(size=(4, 3, 32, 32))
    y = np.array([1, 2, 3, 4]).astype('float32')
    out1, grads1, aux1 = _train_pass(plain, x, y)
    out2, grads2, aux2 = _train_pass(fast, x, y)
    onp.testing.assert_allclose(out2, out1, rtol=1e-4, atol=1e-3)
    _assert_grads_close(grads1, grads2)
    assert sum(name.endswith('alpha') for name in grads2) == 9
    for name in aux1:  # BatchNorm running statistics move the same way
        onp.testing.assert_allclose(aux2[name], aux1[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_slopes_of_every_kind():
    """Slopes below 0, in [0, 1], exactly 0 and above 1 (the sign handling of bn_prelu_conv)."""
    plain, fast = _pair()
    for net in (plain, fast):
        for name, p in net._collect_params_with_prefix().items():
            if name.endswith('alpha'):
                c = p.shape[0]
                p.set_data(np.array(onp.resize([-0.7, 0.0, 0.3, 0.999, 1.001, 2.5], c)
                                    .astype('float32')))
    fast.hybridize(static_alloc=True, static_shape=True)
    x = np.random.uniform(size=(4, 3, 32, 32))
    y = np.array([1, 2, 3, 4]).astype('float32')
    out1, grads1, _ = _train_pass(plain, x, y)
    out2, grads2, _ = _train_pass(fast, x, y)
    onp.testing.assert_allclose(out2, out1, rtol=1e-4, atol=1e-3)
    _assert_grads_close(grads1, grads2)


def test_one_sgd_step_equal_plain():
    plain, fast = _pair(use_dropout=False)
    x = np.random.uniform(size=(4, 3, 32, 32))
    y = np.array([1, 2, 3, 4]).astype('float32')
    fast.hybridize(static_alloc=True, static_shape=True)
    for net in (plain, fast):
        trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'wd': 5e-4})
        _train_pass(net, x, y)
        trainer.step(4)
    p1, p2 = plain._collect_params_with_prefix(), fast._collect_params_with_prefix()
    for name in p1:
        onp.testing.assert_allclose(p2[name].data().asnumpy(), p1[name].data().asnumpy(),
                                    rtol=1e-4, atol=1e-4, err_msg=name)


def test_fast_hybridized_equals_imperative():
    net = gaf.get_faceresnet(18, 16)
    x = np.random.uniform(size=(3, 3, 32, 32))
    net(x)  # infer the Dense input size
    _randomize(net)
    ref = net(x)
    with autograd.record(train_mode=True):
        train_ref = net(x)
    net.hybridize(static_alloc=True, static_shape=True)
    onp.testing.assert_allclose(net(x).asnumpy(), ref.asnumpy(), rtol=1e-4, atol=1e-4)
    with autograd.record(train_mode=True):
        train_hyb = net(x)
    onp.testing.assert_allclose(train_hyb.asnumpy(), train_ref.asnumpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('direction', ['plain_to_fast', 'fast_to_plain'])
def test_checkpoints_interchangeable(tmp_path, direction):
    """A checkpoint of the plain blocks (the former model.py) loads into the fast blocks and
    gives the same embeddings, and the other way round."""
    plain, fast = _pair()
    src, dst = (plain, fast) if direction == 'plain_to_fast' else (fast, plain)
    path = str(tmp_path / 'net.params')
    src.save_parameters(path)
    fresh = gaf.TrainBlock(18, 16, 10, False, fast=dst.fast)
    fresh.load_parameters(path)  # strict: every name must match both ways
    x = np.random.uniform(size=(3, 3, 32, 32))
    src_test = gaf.TestBlock(18, 16, False, fast=src.fast, params=src.collect_params())
    dst_test = gaf.TestBlock(18, 16, False, fast=fresh.fast, params=fresh.collect_params())
    ref = src_test(x).asnumpy()
    onp.testing.assert_allclose(dst_test(x).asnumpy(), ref, rtol=1e-4,
                                atol=1e-5 * onp.abs(ref).max())


def test_test_block_shares_fast_train_block_parameters():
    plain, fast = _pair()
    test_net = gaf.TestBlock(18, 16, False, params=fast.collect_params())
    x = np.random.uniform(size=(2, 3, 32, 32))
    before = test_net(x).asnumpy()
    for p in fast.collect_params().values():
        if p.name.endswith('alpha'):
            p.set_data(p.data() * 0 + 2.0)
    assert not onp.allclose(test_net(x).asnumpy(), before)


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize('backend', ['auto', None])
def test_inference_net_equals_plain_forward(backend):
    plain, _ = _pair(use_dropout=True)
    test_plain = gaf.TestBlock(18, 16, True, fast=False, params=plain.collect_params())
    x = np.random.uniform(size=(4, 3, 32, 32))
    ref = test_plain(x).asnumpy()  # plain blocks, imperative
    fast = inference_net(test_plain, x.shape, backend=backend)
    with autograd.predict_mode():
        got = fast(x).asnumpy()
    onp.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * onp.abs(ref).max())
    # A frozen copy: later updates need a new one.
    for p in plain.collect_params().values():
        if p.name.endswith('alpha'):
            p.set_data(p.data() * 0 + 0.5)
    onp.testing.assert_allclose(fast(x).asnumpy(), got, rtol=1e-6)
    ref2 = test_plain(x).asnumpy()
    got2 = inference_net(plain, x.shape, backend=backend)(x).asnumpy()  # from the TrainBlock
    onp.testing.assert_allclose(got2, ref2, rtol=1e-4, atol=1e-4 * onp.abs(ref2).max())


def test_inference_net_rejects_other_blocks():
    with pytest.raises(TypeError, match='FaceResNet'):
        inference_net(nn.Dense(3))


# ----------------------------------------------------------------------------- benchmark module


def test_benchmark_runs_without_torch(monkeypatch):
    monkeypatch.setattr(benchmark.torch_reference, 'available', lambda: False)
    result = benchmark.run_benchmark(
        num_layers=18, batch_size=2, image_size=16, num_classes=5, emb_size=8,
        infer_batch_size=2, rounds=1, window=1, train_cases=('mx_hybridized', 'mx_default',
                                                             'torch_channels_last'),
        infer_cases=('mx_imperative', 'mx_fast'), memory_cases=('mx_default',),
        loader_images=32, log=lambda *a: None)
    assert set(result['train']) == {'mx_hybridized', 'mx_default'}
    assert result['skipped'] == ['torch_channels_last (PyTorch not installed)']
    assert set(result['loader']['images_per_sec']) == {'flip', 'standard'}
    assert min(result['loader']['images_per_sec'].values()) > 0
    assert result['memory']['mx_default'] > 0  # MB a step adds, from a fresh process
    report = benchmark.format_report(result)
    assert '| training step | mx_default |' in report
    assert '| training step peak memory (MB) | mx_default |' in report
    assert 'inference mx_fast / mx_imperative' in report
    assert 'loader (standard) / training (mx_default)' in report


def test_rec_dataset_for_the_loader(tmp_path):
    folder = benchmark.make_rec_dataset(str(tmp_path / 'rec'), num_images=40, image_size=112,
                                        num_classes=4)
    assert gaf.read_facerec_meta(folder) == ((112, 112), 4)
    loader, _ = gaf.load_data_face_rec(folder, [], batch_size=8, num_workers=0)
    X, y = next(iter(loader))
    assert X.shape == (8, 3, 112, 112) and X.dtype == onp.float32
    assert 0 <= float(X.min()) and float(X.max()) <= 1
    assert benchmark.loader_throughput(folder, batch_size=8, num_workers=0) > 0


def test_interleaved_runs_every_case():
    calls = []
    rates = benchmark.interleaved({'a': (lambda: calls.append('a'), 2),
                                   'b': (lambda: calls.append('b'), 3)}, rounds=2, window=1,
                                  warmup=1)
    assert calls == ['a', 'b', 'a', 'b', 'a', 'b']
    assert len(rates['a']) == len(rates['b']) == 2


def test_fast_blocks_over_two_cpu_contexts():
    """The data-parallel step (split_and_load over two CPU contexts) agrees with plain blocks."""
    plain, fast = _pair()
    ctx = [mx.cpu(0), mx.cpu(1)]
    for net in (plain, fast):
        net.collect_params().reset_ctx(ctx)
    from gluon_arcface.train.training import forward_backward
    x = np.random.uniform(size=(4, 3, 32, 32))
    y = np.array([1, 2, 3, 4]).astype('float32')
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    outs = [forward_backward(net, loss, x, y, ctx)[1] for net in (plain, fast)]
    for a, b in zip(*outs):
        onp.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-4, atol=1e-3)
