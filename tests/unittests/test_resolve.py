"""The one model resolver: every way a user names a model gives the same description, and the
loaders (verify.py, export.py, --pretrained, FaceEmbedder) take it from there."""
import json
import os
import shutil

import numpy as onp
import pytest

import mxnet as mx
from mxnet import np as mnp

import gluon_arcface as gaf
from gluon_arcface.models.interop import write_model_info
from gluon_arcface.models.pretrained import find_backbone_file
from gluon_arcface.models.resolve import resolve_model
from gluon_arcface.runtime.errors import CheckpointError, ConfigError

EMB = 16


@pytest.fixture(scope='module')
def run_folder(tmp_path_factory):
    """A run folder as scripts/train.py leaves it: model/ (export + model.json), a best
    checkpoint and config.json."""
    mx.random.seed(3)
    net = gaf.TrainBlock(18, EMB, 4, use_dropout=False)
    net(mnp.ones((2, 3, 16, 16)), mnp.array([0, 1]))
    run = tmp_path_factory.mktemp('resolve') / 'run'
    prefix = str(run / 'model' / 'faceresnet18')
    gaf.export_embedding_net(gaf.make_test_net(net), prefix, (16, 16))
    write_model_info(str(run / 'model'), (16, 16), EMB, 18)
    os.makedirs(run / 'checkpoints')
    net.save_parameters(str(run / 'checkpoints' / 'best.params'))
    (run / 'config.json').write_text(json.dumps({'settings': {}, 'resolved': {
        'input_norm': None, 'image_size': [16, 16], 'emb_size': EMB}}))
    return run, prefix, net


def test_every_name_of_an_export_gives_one_description(run_folder):
    run, prefix, _ = run_folder
    names = [prefix, prefix + '-symbol.json', prefix + '-0000.params', prefix + ',0']
    for name in names:
        src = resolve_model(name)
        assert (src.kind, src.prefix, src.epoch, src.path) == (
            'exported', prefix, 0, prefix + '-0000.params'), name
        assert (src.image_size, src.emb_size, src.input_range) == ((16, 16), EMB, 1), name
        assert src.checkpoint is None and src.spec == name
    src = resolve_model(str(run))  # the run folder: its export to run, its best checkpoint
    assert (src.kind, src.prefix) == ('exported', prefix)
    assert src.checkpoint == str(run / 'checkpoints' / 'best.params')
    assert find_backbone_file(str(run)) == (src.checkpoint, 'structural')


def test_a_checkpoint_a_named_model_and_onnx(run_folder, tmp_path):
    run, prefix, _ = run_folder
    best = str(run / 'checkpoints' / 'best.params')
    src = resolve_model(best)
    assert (src.kind, src.path, src.checkpoint) == ('checkpoint', best, best)
    assert (src.image_size, src.emb_size, src.input_range) == ((16, 16), EMB, 1)
    with pytest.raises(CheckpointError, match='no exported model to run'):
        gaf.load_face_model(best)
    with pytest.raises(ConfigError, match='input range 255'):
        resolve_model(best, input_range=255)
    onnx_file = tmp_path / 'm.onnx'
    onnx_file.write_bytes(b'')
    src = resolve_model(str(onnx_file))
    assert (src.kind, src.input_range) == ('onnx', 255)
    assert resolve_model(str(onnx_file), input_range=1).input_range == 1
    if gaf.PRETRAINED_MODELS and _has_dlib_models():
        src = resolve_model('dlib-resnet-v1')
        assert (src.kind, src.emb_size, src.image_size) == ('named', 128, (112, 112))
        assert src.path.endswith('.dat')
        assert resolve_model('dlib-resnet-v1@dlib').kind == 'dlib-reference'
        with pytest.raises(ConfigError, match='does not apply'):
            resolve_model('dlib-resnet-v1', input_range=255)


def _has_dlib_models():
    import importlib.util
    return importlib.util.find_spec('face_recognition_models') is not None


def test_what_does_not_resolve_is_named(run_folder, tmp_path):
    run, prefix, _ = run_folder
    missing = str(tmp_path / 'nothing')
    with pytest.raises(CheckpointError, match='nothing: not found'):
        resolve_model(missing)
    with pytest.raises(FileNotFoundError, match='nothing.onnx'):
        resolve_model(missing + '.onnx')
    with pytest.raises(FileNotFoundError, match='0007.params'):
        resolve_model(prefix + ',7')
    empty = tmp_path / 'empty_run'
    os.makedirs(empty / 'checkpoints')
    with pytest.raises(CheckpointError, match='found none'):
        resolve_model(str(empty))
    lone = tmp_path / 'lone'
    os.makedirs(lone)
    shutil.copy(prefix + '-symbol.json', str(lone / 'm-symbol.json'))
    with pytest.raises(CheckpointError, match='no parameter file'):
        resolve_model(str(lone / 'm'))


def test_the_loaders_agree_on_a_run(run_folder):
    run, prefix, net = run_folder
    x = mnp.array(onp.random.RandomState(0).uniform(size=(2, 3, 16, 16)).astype('float32'))
    want = gaf.make_test_net(net)(x).asnumpy()
    loaded, size, source = gaf.load_face_model(str(run))  # verify.py, FaceEmbedder
    assert size == (16, 16) and source == prefix
    onp.testing.assert_allclose(loaded(x).asnumpy(), want, rtol=1e-4, atol=1e-5)
    rebuilt, size = gaf.faceresnet_from_model(str(run))  # export.py
    onp.testing.assert_allclose(rebuilt(x).asnumpy(), want, rtol=1e-4, atol=1e-5)
    target = gaf.TrainBlock(18, EMB, 7, use_dropout=False)  # --pretrained RUN
    gaf.load_backbone(target, str(run))
    onp.testing.assert_allclose(gaf.make_test_net(target)(x).asnumpy(), want, rtol=1e-4,
                                atol=1e-5)
