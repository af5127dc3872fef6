"""Models in and out: InsightFace MXNet checkpoints (loaded as they are, and mapped into a
FaceResNet), ONNX export for onnxruntime and insightface, and scripts/verify.py / export.py."""
import json
import os
import subprocess
import sys

import cv2
import numpy as onp
import pytest

import mxnet as mx
from mxnet import np as mnp

import gluon_arcface as gaf
from gluon_arcface import interop
from gluon_arcface.runtime.errors import CheckpointError
from gluon_arcface.data.synthetic import SYNTHETIC_VAL, generate_faces

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import onnxruntime
except ImportError:  # the .[onnx] extra (part of .[test]) is not installed
    onnxruntime = None
needs_onnx = pytest.mark.skipif(onnxruntime is None, reason='needs the .[onnx] extra')


def faces(n, size, seed=3):
    """Real-looking inputs: synthetic faces, RGB uint8 (n, size, size, 3)."""
    return generate_faces(n, 1, size, seed=seed, nuisance=1.0)[0]


def as_batch(images):
    return images.transpose(0, 3, 1, 2).astype('float32') / 255.0


def insightface_checkpoint(prefix, units=(2, 2, 2, 2), emb=32, size=32, seed=0, fc7=True):
    """A checkpoint as InsightFace's MXNet training writes it (legacy symbol up to fc7, 'E'
    head), random weights; returns the symbol of the embedding and the parameters."""
    sym = interop.ir_symbol(units, emb)
    rng = onp.random.RandomState(seed)
    with mx.util.np_array(False), mx.util.np_shape(False):
        arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, size, size))
        args = {n: mx.nd.array(rng.normal(0, 0.05, s) + (1 if n.endswith('gamma') else 0))
                for n, s in zip(sym.list_arguments(), arg_shapes) if n != 'data'}
        aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, s) if 'var' in n else rng.normal(0, .1, s))
               for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
        saved = sym
        if fc7:
            saved = mx.sym.FullyConnected(sym, num_hidden=5, no_bias=True, name='fc7')
            args['fc7_weight'] = mx.nd.array(rng.normal(0, 0.1, (5, emb)))
        mx.model.save_checkpoint(prefix, 0, saved, args, aux)
    return sym, args, aux


def symbol_forward(sym, args, aux, pixels):
    """The symbol's own forward on RGB 0-255 images (N, 3, H, W)."""
    with mx.util.np_array(False), mx.util.np_shape(False):
        args = {k: v for k, v in args.items() if k in sym.list_arguments()}
        ex = sym.bind(mx.cpu(), dict(args, data=mx.nd.array(pixels)), aux_states=aux,
                      grad_req='null')
        return ex.forward(is_train=False)[0].asnumpy()


def test_insightface_checkpoint_loads_as_it_computes(tmp_path):
    prefix = str(tmp_path / 'model')
    sym, args, aux = insightface_checkpoint(prefix)
    x = as_batch(faces(4, 32))
    want = symbol_forward(sym, args, aux, x * 255)
    net = gaf.load_embedding_net(prefix)
    assert net.input_range == 255  # detected from the (x - 127.5) * 0.0078125 at its head
    got = net(mnp.array(x)).asnumpy()
    onp.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * onp.abs(want).max())
    # ... and every user of embeddings takes it like a TestBlock.
    emb = gaf.compute_embeddings([x], net, mx.cpu(), batch_size=4)
    onp.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-4 * onp.abs(want).max())
    assert gaf.embed_images(faces(2, 32), net, image_size=(32, 32)).shape == (2, 32)
    # The same through load_face_model with InsightFace's PREFIX,EPOCH.
    net2, size, _ = gaf.load_face_model(prefix + ',0')
    assert size == (32, 32)
    onp.testing.assert_allclose(net2(mnp.array(x)).asnumpy(), want, rtol=1e-4,
                                atol=1e-4 * onp.abs(want).max())


@pytest.mark.parametrize('units', [(2, 2, 2, 2), (3, 4, 14, 3)])
def test_insightface_ir_resnet_maps_into_faceresnet(tmp_path, units):
    prefix = str(tmp_path / 'model')
    sym, args, aux = insightface_checkpoint(prefix, units)
    x = as_batch(faces(3, 32))
    want = symbol_forward(sym, args, aux, x * 255)
    net, info = interop.faceresnet_from_insightface(prefix)
    assert info['num_layers'] == {(2, 2, 2, 2): 18, (3, 4, 14, 3): 50}[units]
    assert info['emb_size'] == 32 and info['input_norm'] == [0.5, 255 / 128]
    got = net(mnp.array(x)).asnumpy()  # fc1's BatchNorm folded into the embedding layer
    onp.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * onp.abs(want).max())
    if units == (2, 2, 2, 2):
        # Fine-tuning takes it: a TrainBlock with InsightFace's input normalisation.
        train = gaf.TrainBlock(18, 32, 7, False, input_norm=interop.INSIGHTFACE_INPUT_NORM)
        gaf.pretrained.load_backbone(train, prefix + ',0')
        test = gaf.make_test_net(train)
        onp.testing.assert_allclose(test(mnp.array(x)).asnumpy(), want, rtol=1e-3,
                                    atol=1e-4 * onp.abs(want).max())
        with pytest.raises(CheckpointError, match='input_norm'):
            gaf.pretrained.load_backbone(gaf.TrainBlock(18, 32, 7, False), prefix)


def trained_like(depth, emb=64, seed=0):
    """A TestBlock whose statistics and slopes are not the initial ones."""
    mx.random.seed(seed)
    net = gaf.TrainBlock(depth, emb, 10, True)
    net(mnp.ones((2, 3, 112, 112)), mnp.array([0, 1]))
    rng = onp.random.RandomState(seed)
    for name, p in net.collect_params().items():
        v = p.data().asnumpy()
        if name.endswith('alpha'):
            v = rng.uniform(-0.2, 0.8, v.shape)
        elif name.endswith(('running_mean', 'beta')):
            v = rng.normal(0, 0.1, v.shape)
        elif name.endswith(('running_var', 'gamma')):
            v = rng.uniform(0.5, 1.5, v.shape)
        p.set_data(mnp.array(v.astype('float32')))
    return gaf.make_test_net(net)


@needs_onnx
@pytest.mark.parametrize('depth', [18, 50])
def test_onnx_export_matches_mxnet(tmp_path, depth):
    import onnx
    net = trained_like(depth)
    path = gaf.export_onnx(net, str(tmp_path / 'face.onnx'), (112, 112))
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ['data']  # weights are not inputs
    assert [o.name for o in model.graph.output] == ['embedding']
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == \
        [3, 112, 112]
    # What insightface's model_zoo looks for: a Sub and a Mul among the first nodes.
    first = [n.name for n in model.graph.node[:8]]
    assert any(n.startswith('Sub') for n in first) and any(n.startswith('Mul') for n in first)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    images = faces(5, 112)
    want = gaf.compute_embeddings([as_batch(images)], net, mx.cpu(), batch_size=5, fast=False)
    for batch in (images[:1], images):  # any batch size
        got = session.run(None, {'data': images_0_255(batch)})[0]
        # The stated tolerance: 1e-4 of the largest embedding value (float32 sums differ).
        onp.testing.assert_allclose(got, want[:len(batch)], rtol=0,
                                    atol=1e-4 * onp.abs(want).max())


def images_0_255(images):
    return images.transpose(0, 3, 1, 2).astype('float32')


@needs_onnx
def test_insightface_arcfaceonnx_computes_the_same_embedding(tmp_path):
    """insightface's ArcFaceONNX, given an aligned BGR crop, feeds cv2.dnn.blobFromImages(
    crops, 1/input_std, (W, H), (input_mean,)*3, swapRB=True) with input_mean 0 and input_std 1
    when the model starts with Sub and Mul nodes (raw RGB 0-255): the embedding must be
    gaf.get_embedding's of the same face."""
    net = trained_like(18)
    path = gaf.export_onnx(net, str(tmp_path / 'face.onnx'), (112, 112))
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    rgb = faces(2, 112)
    bgr = [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in rgb]
    blob = cv2.dnn.blobFromImages(bgr, 1.0, (112, 112), (0.0, 0.0, 0.0), swapRB=True)
    got = session.run(None, {session.get_inputs()[0].name: blob})[0]
    for i in range(2):
        want = gaf.get_embedding(rgb[i], net).asnumpy()[0]
        onp.testing.assert_allclose(got[i], want, rtol=0, atol=1e-4 * onp.abs(want).max())


@needs_onnx
def test_export_of_a_model_mapped_from_insightface_keeps_its_pixels(tmp_path):
    prefix = str(tmp_path / 'model')
    sym, args, aux = insightface_checkpoint(prefix, size=112)
    path = str(tmp_path / 'if.onnx')
    out = run_script('export.py', '--model', prefix + ',0', '--onnx', path, '--check')
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'largest |onnxruntime - MXNet|' in out.stdout
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    pixels = images_0_255(faces(3, 112))
    want = symbol_forward(sym, args, aux, pixels)
    got = session.run(None, {'data': pixels})[0]
    onp.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * onp.abs(want).max())


def run_script(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', name), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


@needs_onnx
def test_verify_script_on_a_run_its_export_and_its_onnx(tmp_path, synthetic_faces):
    data = synthetic_faces(8, 4, 6, 20, 32)
    run = str(tmp_path / 'run')
    out = run_script('train.py', '--data-dir', data, '--val-targets', SYNTHETIC_VAL,
                     '--emb-size', '16', '--batch-size', '8', '--epochs', '1', '--output', run,
                     '--no-progress', '--num-workers', '1', '--seed', '1')
    assert out.returncode == 0, out.stderr[-2000:]
    onnx_path = str(tmp_path / 'model.onnx')
    out = run_script('export.py', '--model', run, '--onnx', onnx_path)
    assert out.returncode == 0, out.stderr[-2000:]
    tables = []
    for model in (run, os.path.join(run, 'model', 'faceresnet18'), onnx_path):
        out = run_script('verify.py', '--model', model, '--data-dir', data, '--targets',
                         SYNTHETIC_VAL, '--no-progress', '--output', str(tmp_path / 'v'))
        assert out.returncode == 0, out.stderr[-2000:]
        tables.append(out.stdout.split('\nwrote')[0])
    metrics = json.load(open(os.path.join(run, 'metrics.json')))['verification'][SYNTHETIC_VAL]
    assert '%.2f' % (100 * metrics['accuracy']) in tables[0]
    rows = [[line for line in t.splitlines() if line.startswith(SYNTHETIC_VAL)][0].split()[:4]
            for t in tables]  # target, accuracy, ±, std (a model file's line comes first)
    assert rows[0] == rows[1] == rows[2], tables
    report = json.load(open(tmp_path / 'v' / 'verification.json'))
    assert report['targets'][SYNTHETIC_VAL]['num_pairs'] == 20


@needs_onnx
def test_not_a_face_model_is_a_clear_error(tmp_path):
    prefix = str(tmp_path / 'seg')
    with mx.util.np_array(False), mx.util.np_shape(False):
        sym = mx.sym.Convolution(mx.sym.var('data'), num_filter=4, kernel=(3, 3), name='c')
        mx.model.save_checkpoint(prefix, 0, sym, {'c_weight': mx.nd.ones((4, 3, 3, 3)),
                                                  'c_bias': mx.nd.zeros(4)}, {})
    with pytest.raises(CheckpointError, match=r'not a face embedding model.*\(1, 4, 110, 110\)'):
        gaf.load_face_model(prefix)
    out = run_script('verify.py', '--model', prefix, '--targets', 'lfw', '--no-progress')
    assert out.returncode == 1 and 'error:' in out.stderr and 'not a face embedding' in \
        out.stderr and 'Traceback' not in out.stderr
    (tmp_path / 'junk-symbol.json').write_text('{"nodes": 3}')
    (tmp_path / 'junk-0000.params').write_bytes(b'\0' * 16)
    with pytest.raises(CheckpointError, match='junk-symbol.json'):
        gaf.load_embedding_net(str(tmp_path / 'junk'))
    net = trained_like(18)
    path = gaf.export_onnx(net, str(tmp_path / 'face.onnx'), (112, 112))
    with pytest.raises(ValueError, match='takes 112x112 images, got 64x64'):
        gaf.load_onnx(path)(onp.zeros((1, 3, 64, 64), onp.float32))
