"""The pixel range of InsightFace's MXNet checkpoints (issue 21): read from the head of the graph
(subtract / multiply after data, through identity (op _copy) and Cast nodes; a bn_data
BatchNorm), else InsightFace's 0-255, logged; ``input_range`` / ``--input-range`` override it.

Every checkpoint is built as InsightFace's symbol files build it, with random weights, and saved
with ``mx.model.save_checkpoint`` up to fc7; the reference is its own internal ``fc1_output``
run by a legacy executor on RGB 0-255 pixels."""
import contextlib
import importlib.util
import json
import logging
import os

import cv2
import numpy as onp
import pytest

import mxnet as mx
from mxnet import gluon
from mxnet import np as mnp

import gluon_arcface as gaf
from gluon_arcface import interop
from gluon_arcface.data.binfile import load_bin, write_bin
from gluon_arcface.runtime.errors import CheckpointError, ConfigError
from gluon_arcface.data.synthetic import generate_faces

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import onnxruntime
except ImportError:  # the .[onnx] extra (part of .[test]) is not installed
    onnxruntime = None
needs_onnx = pytest.mark.skipif(onnxruntime is None, reason='needs the .[onnx] extra')

UNITS, EMB, SIZE = (2, 2, 2, 2), 8, 16  # an IR ResNet-18 on 16x16 faces
MFN_SIZE = 112  # MobileFaceNet's 7x7 GDC layer needs it
TOLERANCE = 1e-4  # largest |difference| / largest |value|
SUBTRACTS = 'graph subtracts 127.5 after data'
REASONS = {'identity': SUBTRACTS, 'cast_identity': SUBTRACTS,
           'bn_data': 'bn_data BatchNorm on the input', 'mobilefacenet': SUBTRACTS,
           'none': "no model.json and no recognised normalisation: InsightFace's convention"}


@contextlib.contextmanager
def legacy():
    """MXNet 1.x semantics, as InsightFace's code runs."""
    with mx.util.np_array(False), mx.util.np_shape(False):
        yield


def ir_network(head):
    """fresnet.py's IR ResNet (up to fc1) behind one of its input layers."""
    data = mx.sym.var('data')
    plain = dict(pixel_sub=None, pixel_mul=None)
    if head == 'identity':  # identity 'id' (op _copy), then - 127.5 and * 0.0078125
        return interop.ir_symbol(UNITS, EMB, data=mx.sym.identity(data, name='id'))
    if head == 'cast_identity':  # fp16 configurations: Cast, identity, - 127.5, * 0.0078125
        x = mx.sym.identity(mx.sym.Cast(data, dtype='float16'), name='id')
        # back to float32 before conv0: MXNet has no float16 GEMM on the CPU
        x = mx.sym.Cast((x - 127.5) * 0.0078125, dtype='float32')
        return interop.ir_symbol(UNITS, EMB, data=x, **plain)
    if head.startswith('bn_data'):  # older variants: a BatchNorm on the raw pixels instead
        x = mx.sym.BatchNorm(data, fix_gamma=True, eps=2e-5, momentum=0.9, name='bn_data')
        return interop.ir_symbol(UNITS, EMB, data=x, **plain)
    assert head == 'none'  # the pixels straight into conv0
    return interop.ir_symbol(UNITS, EMB, **plain)


def mobilefacenet(emb=EMB):
    """fmobilefacenet.py, narrower: (data - 127.5) * 0.0078125, Conv blocks (conv, BatchNorm,
    PReLU) with depthwise layers (num_group), residual bottlenecks, conv_6sep (512 channels),
    the GDC head (a 7x7 depthwise Linear), pre_fc1 (FullyConnected) and fc1 (BatchNorm)."""
    sym = mx.sym

    def conv(x, filters, kernel=(1, 1), stride=(1, 1), pad=(0, 0), group=1, name='', act=True):
        x = sym.Convolution(x, num_filter=filters, kernel=kernel, stride=stride, pad=pad,
                            num_group=group, no_bias=True, name=name + '_conv2d')
        x = sym.BatchNorm(x, fix_gamma=False, eps=2e-5, momentum=0.9, name=name + '_batchnorm')
        return sym.LeakyReLU(x, act_type='prelu', name=name + '_relu') if act else x

    def depth_wise(x, out, stride, group, name):  # DResidual
        x = conv(x, group, name=name + '_conv_sep')
        x = conv(x, group, (3, 3), stride, (1, 1), group, name + '_conv_dw')
        return conv(x, out, name=name + '_conv_proj', act=False)

    x = (sym.var('data') - 127.5) * 0.0078125
    x = conv(x, 16, (3, 3), (2, 2), (1, 1), name='conv_1')                      # 56x56
    x = conv(x, 16, (3, 3), (1, 1), (1, 1), 16, name='conv_2_dw')
    x = depth_wise(x, 16, (2, 2), 32, 'dconv_23')                                 # 28x28
    x = x + depth_wise(x, 16, (1, 1), 32, 'res_3_block0')                         # Residual
    x = depth_wise(x, 32, (2, 2), 64, 'dconv_34')                                 # 14x14
    x = depth_wise(x, 32, (2, 2), 64, 'dconv_45')                                 # 7x7
    x = conv(x, 512, name='conv_6sep')
    x = conv(x, 512, (7, 7), group=512, name='conv_6dw7_7', act=False)            # GDC
    x = sym.FullyConnected(x, num_hidden=emb, name='pre_fc1')
    return sym.BatchNorm(x, fix_gamma=True, eps=2e-5, momentum=0.9, name='fc1')


def save_checkpoint(prefix, sym, size, seed=0, bn_data='per_channel'):
    """Random weights (He-scaled; BatchNorm statistics and PReLU slopes not the initial ones),
    saved as InsightFace's training saves them: the symbol continued to fc7. ``bn_data``:
    statistics of a bn_data layer on 0-255 pixels, per channel or the same in each."""
    rng = onp.random.RandomState(seed)
    with legacy():
        arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, size, size))
        args = {}
        for name, shape in zip(sym.list_arguments(), arg_shapes):
            if name == 'data':
                continue
            if '_relu' in name and name.endswith('gamma'):  # PReLU slopes
                value = rng.uniform(0.1, 0.3, shape)
            elif name.endswith('gamma'):
                value = rng.uniform(0.8, 1.2, shape)
            elif name.endswith(('beta', 'bias')):
                value = rng.normal(0, 0.1, shape)
            else:
                value = rng.normal(0, (2.0 / onp.prod(shape[1:])) ** 0.5, shape)
            args[name] = value
        aux = {n: rng.uniform(0.5, 1.5, s) if 'var' in n else rng.normal(0, 0.1, s)
               for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
        if 'bn_data_moving_mean' in aux:
            per_channel = bn_data == 'per_channel'
            aux['bn_data_moving_mean'] = onp.array([131., 110., 97.] if per_channel else [127.] * 3)
            aux['bn_data_moving_var'] = onp.array([3900., 3300., 2800.] if per_channel else
                                                  [4100.] * 3)
            args['bn_data_beta'] = onp.array([0.1, -0.05, 0.02] if per_channel else [0.05] * 3)
            args['bn_data_gamma'] = onp.array([1.7, 0.6, 1.3])  # not used: fix_gamma
        args['fc7_weight'] = rng.normal(0, 0.1, (5, EMB))
        saved = mx.sym.FullyConnected(sym, num_hidden=5, no_bias=True, name='fc7')
        mx.model.save_checkpoint(prefix, 0, saved,
                                 {k: mx.nd.array(v) for k, v in args.items()},
                                 {k: mx.nd.array(v) for k, v in aux.items()})


def checkpoint(tmp_path, head, bn_data='per_channel'):
    """``(prefix, image size)`` of a checkpoint ``<tmp_path>/<head>/model``."""
    folder = tmp_path / head
    folder.mkdir()
    prefix = str(folder / 'model')
    if head == 'mobilefacenet':
        save_checkpoint(prefix, mobilefacenet(), MFN_SIZE)
        return prefix, MFN_SIZE
    save_checkpoint(prefix, ir_network(head), SIZE, bn_data=bn_data)
    return prefix, SIZE


def fc1_output(prefix, pixels):
    """The checkpoint's own embedding: its saved symbol's internal fc1_output, run by a legacy
    executor on ``pixels`` (N, 3, H, W)."""
    with legacy():
        sym, args, aux = mx.model.load_checkpoint(prefix, 0)
        sym = sym.get_internals()['fc1_output']
        args = {k: v for k, v in args.items() if k in sym.list_arguments()}
        aux = {k: v for k, v in aux.items() if k in sym.list_auxiliary_states()}
        executor = sym.bind(mx.cpu(), dict(args, data=mx.nd.array(pixels)), aux_states=aux,
                            grad_req='null')
        return executor.forward(is_train=False)[0].asnumpy()


def face_pixels(n, size, seed=3):
    """Synthetic faces as RGB 0-255 float32 (n, 3, size, size)."""
    images = generate_faces(n, 1, size, seed=seed, nuisance=1.0)[0]
    return images.transpose(0, 3, 1, 2).astype('float32')


def relative(got, want):
    got = got.asnumpy() if hasattr(got, 'asnumpy') else onp.asarray(got)
    return float(onp.abs(got - want).max() / onp.abs(want).max())


def check(got, want, what):
    """``got`` equals ``want`` within TOLERANCE (relative to the largest value); printed."""
    difference = relative(got, want)
    print('%s: largest |difference| / largest |value| = %.2e' % (what, difference))
    assert difference < TOLERANCE, (what, difference)


def run_script(name, argv):
    spec = importlib.util.spec_from_file_location(name + '_script',
                                                  os.path.join(REPO, 'scripts', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture
def log(caplog):
    """The package's log records (its logger stops propagating once a script configures it;
    a NullHandler keeps cli.get_logger from doing so during the test)."""
    logger = logging.getLogger('gluon_arcface')
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = True
    caplog.set_level(logging.INFO, logger='gluon_arcface')
    yield caplog
    logger.handlers[:], logger.propagate = handlers, propagate


def write_pairs(path, size, pairs=6):
    """A small verification .bin of synthetic faces (PNG), ``pairs`` pairs."""
    images, labels = generate_faces(pairs, 2, size, seed=5, nuisance=1.0)
    encoded, issame = [], []
    for i in range(pairs):  # same person, then two different people in turn
        a, b = (2 * i, 2 * i + 1) if i % 2 == 0 else (2 * i, (2 * i + 2) % (2 * pairs))
        encoded += [cv2.imencode('.png', images[j][:, :, ::-1])[1].tobytes() for j in (a, b)]
        issame.append(bool(labels[a] == labels[b]))
    write_bin(str(path), encoded, issame)
    return str(path)


class Reference:
    """The checkpoint's own fc1_output called like the package's blocks (x in [0, 1])."""

    def __init__(self, prefix, scale=255.0):
        self.prefix, self.scale = prefix, scale

    def __call__(self, x):
        x = x.asnumpy() if hasattr(x, 'asnumpy') else onp.asarray(x)
        return mnp.array(fc1_output(self.prefix, x * self.scale))


# ----------------------------------------------------------------------------- the decision

def legacy_head(name):
    data = mx.sym.var('data')
    return {'identity': lambda: (mx.sym.identity(data, name='id') - 127.5) * 0.0078125,
            'cast_identity': lambda: mx.sym.identity(mx.sym.Cast(data, dtype='float16'),
                                                     name='id') - 127.5,
            'bn_data': lambda: mx.sym.BatchNorm(data, fix_gamma=True, name='bn_data'),
            'divide_255': lambda: data / 255.0,
            'minus_half': lambda: (data - 0.5) * 2.0,
            'times_two': lambda: data * 2.0 - 1.0,
            'none': lambda: data}[name]()


@pytest.mark.parametrize('head, expected, reason', [
    ('identity', 255, SUBTRACTS),
    ('cast_identity', 255, SUBTRACTS),
    ('bn_data', 255, REASONS['bn_data']),
    ('divide_255', 255, 'graph divides by 255 after data'),
    ('minus_half', 1, 'graph subtracts 0.5 after data'),
    ('times_two', 1, 'graph multiplies by 2 after data'),
    ('none', 255, REASONS['none']),
])
def test_the_range_each_head_shows(tmp_path, log, head, expected, reason):
    prefix = str(tmp_path / 'm')
    with legacy():
        sym = mx.sym.Convolution(legacy_head(head), num_filter=4, kernel=(3, 3), pad=(1, 1),
                                 no_bias=True, name='conv0')
        sym.save(prefix + '-symbol.json')
    assert interop.input_range_of(prefix) == (expected, reason)
    assert log.messages == ['m: input taken as RGB %s (%s)'
                            % ('0-255' if expected == 255 else '[0, 1]', reason)]
    assert interop.input_range_of(prefix, input_range=1) == (1, 'input_range=1 given')
    # The package's model.json decides over the graph.
    interop.write_model_info(str(tmp_path), (16, 16), 4, 18)
    assert interop.input_range_of(prefix)[0] == 1


def test_a_graph_with_numpy_semantics_is_the_packages(tmp_path, log):
    """export_embedding_net without model.json: the package's [0, 1], not the fallback."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3), gluon.nn.Dense(4))
    net.initialize()
    gaf.export_embedding_net(net, str(tmp_path / 'ours'), (8, 8))
    found, reason = interop.input_range_of(str(tmp_path / 'ours'))
    assert found == 1 and 'NumPy semantics' in reason
    x = onp.random.uniform(size=(2, 3, 8, 8)).astype('float32')
    loaded = gaf.load_embedding_net(str(tmp_path / 'ours'))
    assert loaded.input_range == 1
    check(loaded(mnp.array(x)), net(mnp.array(x)).asnumpy(), 'export without model.json')


# ----------------------------------------------------------------------------- loading

@pytest.mark.parametrize('head', ['identity', 'cast_identity', 'bn_data', 'mobilefacenet'])
def test_a_checkpoint_runs_as_it_computes(tmp_path, log, head):
    prefix, size = checkpoint(tmp_path, head)
    pixels = face_pixels(4, size)
    want = fc1_output(prefix, pixels)
    assert relative(fc1_output(prefix, pixels / 255), want) > 0.05  # the range matters
    net = gaf.load_embedding_net(prefix)
    assert net.input_range == 255
    for _ in range(2):  # MXNet's oneDNN executors can fail on their second forward
        check(net(mnp.array(pixels / 255)), want, '%s: load_embedding_net' % head)
    # The same through load_face_model, which also finds the input size (MobileFaceNet's too).
    net, image_size, _ = gaf.load_face_model(prefix + ',0')
    assert image_size == (size, size) and net.input_range == 255
    check(net(mnp.array(pixels / 255)), want, '%s: load_face_model' % head)
    assert 'model: input taken as RGB 0-255 (%s)' % REASONS[head] in log.messages


@pytest.mark.parametrize('head', ['identity', 'cast_identity', 'bn_data', 'mobilefacenet'])
def test_verify_script_scores_a_checkpoint_as_it_computes(tmp_path, log, head):
    prefix, size = checkpoint(tmp_path, head)
    path = write_pairs(tmp_path / 'pairs.bin', size)
    assert run_script('verify', ['--model', prefix + ',0', '--targets', path, '--no-progress',
                                 '--output', str(tmp_path / 'v')]) == 0
    got = json.load(open(tmp_path / 'v' / 'verification.json'))['targets']['pairs']
    want = gaf.verify(load_bin(path, (size, size)), Reference(prefix), batch_size=64)
    check([got['xnorm']], [want.xnorm], '%s: verify.py XNorm' % head)
    assert got['accuracy'] == want.accuracy
    assert 'model: input taken as RGB 0-255 (%s)' % REASONS[head] in log.messages


def test_an_unrecognised_head_is_taken_as_0_255_and_said(tmp_path, log):
    prefix, size = checkpoint(tmp_path, 'none')
    pixels = face_pixels(4, size)
    want = fc1_output(prefix, pixels)
    net = gaf.load_embedding_net(prefix)
    assert net.input_range == 255
    assert log.messages == ['model: input taken as RGB 0-255 (%s)' % REASONS['none']]
    check(net(mnp.array(pixels / 255)), want, 'none: load_embedding_net')


def test_input_range_overrides(tmp_path, log):
    prefix, size = checkpoint(tmp_path, 'identity')
    x = face_pixels(4, size) / 255
    want = fc1_output(prefix, x)  # the graph fed [0, 1] as it is
    net = gaf.load_embedding_net(prefix, input_range=1)
    assert net.input_range == 1 and not isinstance(net, interop.PixelRange)
    assert log.messages == ['model: input taken as RGB [0, 1] (input_range=1 given)']
    check(net(mnp.array(x)), want, 'identity: load_embedding_net(input_range=1)')
    net, _, _ = gaf.load_face_model(prefix, input_range=1)
    check(net(mnp.array(x)), want, 'identity: load_face_model(input_range=1)')
    with pytest.raises(ValueError, match='input_range is 1 .* or 255'):
        gaf.load_embedding_net(prefix, input_range=256)
    # verify.py --input-range 1 scores that model, not the 0-255 one.
    path = write_pairs(tmp_path / 'pairs.bin', size)
    assert run_script('verify', ['--model', prefix, '--targets', path, '--no-progress',
                                 '--output', str(tmp_path / 'v'), '--input-range', '1']) == 0
    got = json.load(open(tmp_path / 'v' / 'verification.json'))['targets']['pairs']
    result = gaf.verify(load_bin(path, (size, size)), Reference(prefix, scale=1.0))
    check([got['xnorm']], [result.xnorm], 'identity: verify.py --input-range 1 XNorm')
    with pytest.raises(SystemExit):
        run_script('verify', ['--model', prefix, '--input-range', '100'])
    # A FaceResNet of a graph that takes [0, 1]: input_norm is the graph's own (x - 127.5) / 128.
    mapped, _ = gaf.faceresnet_from_model(prefix + ',0', input_range=1)
    assert mapped.input_norm == (127.5, 0.0078125)
    check(mapped(mnp.array(x)), want, 'identity: faceresnet_from_model(input_range=1)')
    # The package's own models take [0, 1]: 255 contradicts them.
    (tmp_path / 'ours.params').write_bytes(b'')
    with pytest.raises(ConfigError, match=r'ours\.params is a model of this package'):
        gaf.faceresnet_from_model(str(tmp_path / 'ours.params'), input_range=255)


# ----------------------------------------------------------------------------- mapping, export

@pytest.mark.parametrize('head', ['identity', 'cast_identity', 'bn_data_uniform'])
def test_pretrained_mapping_computes_the_checkpoints_embedding(tmp_path, log, head):
    prefix, size = checkpoint(tmp_path, head, bn_data='uniform')
    pixels = face_pixels(4, size)
    want = fc1_output(prefix, pixels)
    x = mnp.array(pixels / 255)
    net, info = interop.faceresnet_from_insightface(prefix)
    if head == 'bn_data_uniform':  # (p - 127) / sqrt(4100 + 2e-5) + 0.05, gamma fixed at 1
        std = (4100 + 2e-5) ** 0.5
        assert info['input_norm'] == pytest.approx([(127 - 0.05 * std) / 255, 255 / std])
    else:
        assert tuple(info['input_norm']) == interop.INSIGHTFACE_INPUT_NORM
    check(net(x), want, '%s: faceresnet_from_insightface' % head)
    train = gaf.TrainBlock(18, EMB, 7, False, input_norm=info['input_norm'])
    gaf.pretrained.load_backbone(train, prefix + ',0')
    check(gaf.make_test_net(train)(x), want, '%s: --pretrained (load_backbone)' % head)


def test_a_per_channel_bn_data_is_not_mapped(tmp_path, log, capsys):
    prefix, _ = checkpoint(tmp_path, 'bn_data')
    with pytest.raises(CheckpointError, match=r'model-symbol\.json: .*bn_data.*load_embedding_net'):
        interop.faceresnet_from_insightface(prefix)
    assert run_script('export', ['--model', prefix + ',0', '--onnx',
                                 str(tmp_path / 'm.onnx')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'per channel' in err and 'Traceback' not in err


@needs_onnx
@pytest.mark.parametrize('head', ['identity', 'cast_identity'])
def test_export_script_writes_the_checkpoints_embedding(tmp_path, log, head):
    prefix, size = checkpoint(tmp_path, head)
    path = str(tmp_path / 'face.onnx')
    assert run_script('export', ['--model', prefix + ',0', '--onnx', path]) == 0
    assert 'model: input taken as RGB 0-255 (%s)' % REASONS[head] in log.messages
    pixels = face_pixels(4, size)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    check(session.run(None, {'data': pixels})[0], fc1_output(prefix, pixels),
          '%s: export.py --onnx' % head)
    # An ONNX model taking [0, 1] runs with input_range=1: the pixels go in unscaled.
    net, _, _ = gaf.load_face_model(path, input_range=1)
    assert net.input_range == 1
    check(net(pixels / 255), session.run(None, {'data': pixels / 255})[0],
          '%s: load_face_model(.onnx, input_range=1)' % head)
