"""Fine-tuning: load_backbone copies exactly the backbone (from a checkpoint, a run folder or an
exported model), leaves the head alone, and refuses another network with both shapes named."""
import json
import os
import re

import numpy as onp
import pytest

import mxnet as mx
from mxnet import np as mnp

import gluon_arcface as gaf
from gluon_arcface.runtime.errors import CheckpointError
from gluon_arcface.models.pretrained import backbone_input_norm, find_backbone_file, load_backbone

EMB = 16


def trained_net(num_classes=5, emb=EMB, layers=18, seed=1):
    mx.random.seed(seed)
    net = gaf.TrainBlock(layers, emb, num_classes, use_dropout=True)
    net(mnp.ones((2, 3, 16, 16)), mnp.array([0, 1]))  # complete the deferred initialisation
    for param in net.collect_params().values():  # distinct values everywhere, stats included
        param.set_data(mnp.random.normal(size=param.shape))
    return net


def backbone(net):
    """Backbone arrays by name, the embedding layer named alike with or without Dropout."""
    return {re.sub(r'^output\.\d+\.', 'output.dense.', name): p.data().asnumpy()
            for name, p in net.feat_net[0]._collect_params_with_prefix().items()}


def assert_same_backbone(a, b):
    want, got = backbone(a), backbone(b)
    assert want.keys() == got.keys()
    for name in want:
        onp.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_from_a_checkpoint_the_backbone_only(tmp_path):
    source = trained_net()
    path = str(tmp_path / 'epoch-0003.params')
    source.save_parameters(path)
    target = gaf.TrainBlock(18, EMB, 9, use_dropout=True)  # new people, another head size
    head = target.margin_block.fc7_weight.data().asnumpy().copy()
    assert load_backbone(target, path) == path
    assert_same_backbone(source, target)
    onp.testing.assert_array_equal(target.margin_block.fc7_weight.data().asnumpy(), head)
    # And it runs (the Dense input size came from the file).
    assert target(mnp.ones((2, 3, 16, 16)), mnp.array([0, 8])).shape == (2, 9)


def test_from_an_exported_model_and_a_run_folder(tmp_path):
    source = trained_net()
    run = tmp_path / 'run'
    gaf.export_embedding_net(gaf.make_test_net(source), str(run / 'model' / 'faceresnet18'),
                             (16, 16))
    target = gaf.TrainBlock(18, EMB, 3, use_dropout=False)  # dropout or not: same parameters
    load_backbone(target, str(run / 'model' / 'faceresnet18'))
    assert_same_backbone(source, target)
    # A run folder: checkpoints/best.params comes first, the exported model otherwise.
    assert find_backbone_file(str(run))[1] == 'exported'
    other = trained_net(seed=2)
    os.makedirs(run / 'checkpoints')
    other.save_parameters(str(run / 'checkpoints' / 'best.params'))
    target = gaf.TrainBlock(18, EMB, 3, use_dropout=True)
    load_backbone(target, str(run))
    assert_same_backbone(other, target)
    # A FeatBlock (the model-parallel backbone) takes it too.
    feat = gaf.FeatBlock(18, EMB, True)
    load_backbone(feat, str(run))
    assert_same_backbone(other, feat)
    # The run's config.json says which input normalisation the backbone learnt with; one that
    # cannot be read is an error naming it, not a silent guess.
    (run / 'config.json').write_text('{"settings": {}, "resolved": {"input_norm": [0.5, 2.0]}}')
    assert backbone_input_norm(str(run)) == (0.5, 2.0)
    (run / 'config.json').write_text('{"settings": ')
    with pytest.raises(CheckpointError, match='config.json'):
        backbone_input_norm(str(run))


def test_another_network_is_refused_with_both_shapes(tmp_path):
    path = str(tmp_path / 'm.params')
    trained_net(emb=32).save_parameters(path)
    target = gaf.TrainBlock(18, EMB, 3, use_dropout=True)
    with pytest.raises(CheckpointError, match=r'shape \(32, .*needs \(16, .*--emb-size'):
        load_backbone(target, path)
    deeper = str(tmp_path / 'r34.params')
    trained_net(layers=34).save_parameters(deeper)
    with pytest.raises(CheckpointError, match='another depth'):
        load_backbone(target, deeper)
    with pytest.raises(CheckpointError, match='not found'):
        load_backbone(target, str(tmp_path / 'nothing'))
    (tmp_path / 'junk.params').write_bytes(b'\0' * 100)
    with pytest.raises(CheckpointError, match='unreadable'):
        load_backbone(target, str(tmp_path / 'junk.params'))


def test_cli_fine_tunes_from_a_run(tmp_path, synthetic_faces):
    """scripts/train.py --pretrained RUN: the backbone starts from RUN's best checkpoint, the
    head is new (another number of identities), and a frozen first epoch leaves it unchanged."""
    from test_cli import run_train  # noqa: E402 - the shared helper
    from gluon_arcface.data.synthetic import SYNTHETIC_VAL
    first = synthetic_faces(6, 4, 4, 10, 16, seed=1)
    second = synthetic_faces(5, 4, 4, 10, 16, seed=2)
    common = ['--val-targets', SYNTHETIC_VAL, '--emb-size', '16', '--batch-size', '8',
              '--no-progress', '--num-workers', '1', '--seed', '1']
    out = run_train('--data-dir', first, '--epochs', '1', '--output', str(tmp_path / 'r1'),
                    *common)
    assert out.returncode == 0, out.stderr[-2000:]
    out = run_train('--data-dir', second, '--epochs', '1', '--output',
                    str(tmp_path / 'r2'), '--pretrained', str(tmp_path / 'r1'),
                    '--freeze-epochs', '1', *common)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'backbone from %s' % (tmp_path / 'r1' / 'checkpoints' / 'best.params') in out.stdout
    config = json.load(open(tmp_path / 'r2' / 'config.json'))
    assert config['settings']['pretrained'] == str(tmp_path / 'r1')
    a = mx.npx.load(str(tmp_path / 'r1' / 'checkpoints' / 'best.params'))
    b = mx.npx.load(str(tmp_path / 'r2' / 'checkpoints' / 'epoch-0001.params'))
    conv = 'feat_net.0.features.0.weight'
    onp.testing.assert_array_equal(a[conv].asnumpy(), b[conv].asnumpy())  # frozen
    assert b['margin_block.fc7_weight'].shape == (5, 16)
    out = run_train('--data-dir', second, '--epochs', '1', '--output',
                    str(tmp_path / 'r3'), '--pretrained', str(tmp_path / 'r1'), *common[:2],
                    '--emb-size', '32', *common[4:])
    assert out.returncode == 1 and 'error:' in out.stderr and '--emb-size' in out.stderr
    assert 'Traceback' not in out.stderr
