"""Every scripts/train.py flag, end to end: parsed as the script parses it, it reaches
config.json and the object that acts on it (loader, network, head, trainer, schedule).

The training functions are wrapped to record what recipe.fit hands them, then run for real on
a tiny dataset (one or two epochs of 16x16 faces).
"""
import dataclasses
import json
import os

import pytest

from mxnet import gluon

import gluon_arcface as gaf
from gluon_arcface import config, recipe
from gluon_arcface.data.augment import AugmentSettings
from gluon_arcface.data.synthetic import SYNTHETIC_VAL


@pytest.fixture(scope='module')
def tiny(synthetic_faces):
    return synthetic_faces(6, 6, 6, 12, 16)


class Spy:
    """Wraps recipe's training functions: records their arguments, then runs them."""

    def __init__(self, monkeypatch):
        self.calls = {}
        for name in ('train_ch_facerec', 'train_ch_facerec_parall'):
            real = getattr(recipe, name)
            monkeypatch.setattr(recipe, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def call(*args, **kwargs):
            self.calls[name] = (args, kwargs)
            return real(*args, **kwargs)
        return call


def fit(argv, monkeypatch):
    spy = Spy(monkeypatch)
    cfg = config.config_from_args(config.build_parser().parse_args(argv))
    metrics = recipe.fit(cfg)
    settings = json.load(open(os.path.join(cfg.output, 'config.json')))
    return spy, cfg, metrics, settings


def test_model_data_and_optimisation_flags(tiny, tmp_path, monkeypatch):
    out = str(tmp_path / 'run')
    argv = ['--data-dir', tiny, '--val-targets', SYNTHETIC_VAL, '--output', out,
            '--num-layers', '34', '--emb-size', '24', '--loss', 'sphereface',
            '--margin-s', '12', '--margin-a', '1.2', '--margin-m', '0.1', '--margin-b', '0.05',
            '--margin-warmup', '0.5', '--margin-hold', '0.25', '--dropout', '0.3',
            '--batch-size', '8', '--lr', '0.05', '--wd', '0.001', '--momentum', '0.8',
            '--nesterov', '--epochs', '2', '--lr-schedule', 'cosine', '--warmup-epochs', '0.5',
            '--lr-steps', '1', '--seed', '3', '--num-workers', '1', '--image-size', '32',
            '--augment', 'standard', '--aug-flip', '0.1', '--aug-rotate', '0.3',
            '--aug-rotate-deg', '5', '--aug-crop', '0.4', '--aug-crop-scale', '0.5,0.9',
            '--aug-crop-ratio', '0.8,1.2', '--aug-lowres', '0.5', '--aug-lowres-scale',
            '0.3,0.6', '--aug-color', '0.6', '--aug-brightness', '0.1', '--aug-contrast', '0.2',
            '--aug-saturation', '0.3', '--aug-gray', '0.7', '--skip-bad', '--ctx', 'cpu:0',
            '--kvstore', 'local', '--verify-every', '2', '--no-progress', '--no-export',
            '--backbone-lr-mult', '0.5', '--freeze-epochs', '0.5']
    spy, cfg, metrics, saved = fit(argv, monkeypatch)
    assert TrainConfigFrom(saved) == cfg  # everything given is in config.json

    (net, loader, loss, trainer, num_epochs, ctx), options = spy.calls['train_ch_facerec']
    # model
    assert (net.num_layers, net.emb_size) == (34, 24)
    head = net.margin_block
    assert isinstance(head, gaf.ArcMarginBlock)
    assert (head.margin_s, head.margin_a, head.margin_m, head.margin_b) == (12.0, 1.2, 0.1, 0.05)
    dropout = [b for b in net.feat_net[0].output if isinstance(b, gluon.nn.Dropout)]
    assert len(dropout) == 1 and dropout[0]._rate == 0.3
    # data
    assert loader.dataset_info['source'].startswith(tiny)
    assert loader.dataset_info['image_size'] == (32, 32)
    assert loader.dataset_info['batch_size'] == 8 and loader.dataset_info['num_workers'] == 1
    assert loader.face_dataset.skip_bad
    assert loader.transform.seed == 3 and loader.transform.image_size == (32, 32)
    assert loader.transform.augment == AugmentSettings(
        flip=0.1, rotate=0.3, rotate_deg=5.0, crop=0.4, crop_scale=(0.5, 0.9),
        crop_ratio=(0.8, 1.2), lowres=0.5, lowres_scale=(0.3, 0.6), color=0.6, brightness=0.1,
        contrast=0.2, saturation=0.3, gray=0.7)
    assert list(options['val_set']) == [SYNTHETIC_VAL]
    assert options['val_set'][SYNTHETIC_VAL][0][0].shape[2:] == (32, 32)
    # optimisation
    opt = trainer._optimizer
    assert type(opt).__name__ == 'NAG' and opt.momentum == 0.8 and opt.wd == 0.001
    assert trainer._kvstore_params['kvstore'] == 'local'
    s = options['schedule']
    assert (s.base_lr, s.lr_schedule, s.lr_steps, s.warmup_epochs) == (0.05, 'cosine', (1,), 0.5)
    assert (s.margin_warmup, s.margin_hold) == (0.5, 0.25)
    assert (s.freeze_epochs, s.backbone_lr_mult) == (0.5, 0.5)
    assert num_epochs == 2 and [str(c) for c in ctx] == ['cpu(0)']
    # run
    assert options['verify_every'] == 2 and options['progress'] is False
    assert options['checkpoint_dir'] == os.path.join(out, 'checkpoints')
    assert [e.get('verification') is not None for e in metrics['epochs']] == [False, True]
    assert not os.path.exists(os.path.join(out, 'model'))  # --no-export
    # What the schedule did: ramp and LR in the history, the backbone frozen half an epoch.
    assert metrics['epochs'][1]['margin_ramp'] == 1.0
    assert metrics['epochs'][1]['lr'] < 0.05


def TrainConfigFrom(saved):
    return config.TrainConfig.from_dict(saved['settings'])


@pytest.mark.parametrize('margin_s', ['auto', 'adacos'])
def test_scale_flags_and_model_parallel(tiny, tmp_path, monkeypatch, margin_s):
    out = str(tmp_path / margin_s)
    argv = ['--data-dir', tiny, '--val-targets', SYNTHETIC_VAL, '--output', out,
            '--emb-size', '16', '--batch-size', '8', '--epochs', '1', '--loss', 'cosface',
            '--margin-s', margin_s, '--model-parallel', '--ctx', 'cpu:0,cpu:1',
            '--no-progress', '--num-workers', '1']
    spy, cfg, metrics, saved = fit(argv, monkeypatch)
    assert 'train_ch_facerec_parall' in spy.calls
    (net, cls_nets, loader, num_epochs, ctx), options = spy.calls['train_ch_facerec_parall']
    assert len(cls_nets) == 2 and sum(h.num_classes for h in cls_nets) == 6
    expected = gaf.margin.adacos_fixed_scale(6)
    assert saved['resolved']['margin']['margin_s'] == pytest.approx(expected)
    assert all(h.margin_s == pytest.approx(expected) for h in cls_nets)
    assert all(h.adaptive_scale == (margin_s == 'adacos') for h in cls_nets)
    moved = metrics['epochs'][0]['margin_scale'] != pytest.approx(expected)
    assert moved == (margin_s == 'adacos')  # dynamic AdaCos changed it, the fixed one did not


def test_softmax_dataset_and_resume_flags(tiny, tmp_path, monkeypatch):
    out = str(tmp_path / 'run')
    common = ['--output', out, '--emb-size', '16', '--batch-size', '12', '--no-progress',
              '--num-workers', '1', '--loss', 'softmax', '--val-targets', '']
    spy, cfg, _, saved = fit(common + ['--data-dir', tiny, '--epochs', '1', '--recipe',
                                       'small-data', '--image-size', '16',
                                       '--verify-every', '1'], monkeypatch)
    (net, loader, _, trainer, _, _), options = spy.calls['train_ch_facerec']
    assert isinstance(net.margin_block, gaf.SoftmaxBlock)
    assert saved['settings']['recipe'] == 'small-data'
    small = config.RECIPES['small-data']
    assert net.emb_size == 16 and trainer._optimizer.momentum == small['momentum']
    # the recipe keeps the chapter's flip unless it names a preset of its own
    preset = small.get('augment', config.TrainConfig().augment)
    assert loader.transform.augment == gaf.augment.AUGMENT_PRESETS[preset]
    # --resume: the settings come back from config.json; --epochs given now extends the run.
    spy, cfg, metrics, saved = fit(['--output', out, '--resume', '--epochs', '2'], monkeypatch)
    assert cfg.recipe == 'small-data' and cfg.loss == 'softmax' and cfg.data_dir == tiny
    assert dataclasses.replace(cfg, epochs=1, resume=False) == \
        config.TrainConfig.from_dict(dict(saved['settings'], epochs=1, resume=False))
    assert spy.calls['train_ch_facerec'][1]['resume'] is True
    assert [e['epoch'] for e in metrics['epochs']] == [1, 2]


def test_max_samples_lowers_the_epochs_of_a_large_set(tiny, tmp_path, monkeypatch):
    """--max-samples keeps a run on a few thousand photos near the time of a smaller one: the
    epochs drop to max_samples // images (never below one); config.json keeps the setting
    given and records the epochs run."""
    common = ['--data-dir', tiny, '--val-targets', '', '--emb-size', '16', '--batch-size', '12',
              '--no-progress', '--num-workers', '1', '--image-size', '16', '--no-export',
              '--lr-schedule', 'cosine']
    spy, cfg, metrics, saved = fit(common + ['--output', str(tmp_path / 'a'), '--epochs', '3',
                                             '--max-samples', '1'], monkeypatch)
    images = saved['resolved']['images']
    assert saved['settings']['epochs'] == 3 and saved['resolved']['epochs'] == 1
    (_, _, _, _, num_epochs, _), options = spy.calls['train_ch_facerec']
    assert num_epochs == 1 and options['schedule'].num_epochs == 1  # cosine ends at epoch 1
    assert len(metrics['epochs']) == 1
    assert 'epochs: 1 instead of 3' in open(tmp_path / 'a' / 'train.log').read()
    spy, cfg, metrics, saved = fit(common + ['--output', str(tmp_path / 'b'), '--epochs', '3',
                                             '--max-samples', str(2 * images + 1)], monkeypatch)
    assert saved['resolved']['epochs'] == 2 and len(metrics['epochs']) == 2


def test_a_batch_the_memory_cannot_hold_is_refused_before_training(tiny, tmp_path, monkeypatch):
    """The chapter's batch of 512 at 112x112 needs about 33 GB on a CPU; a run that cannot fit
    stops with a ConfigError saying what to change, instead of being killed by the system."""
    from gluon_arcface.nn.model import estimate_step_memory
    need = estimate_step_memory(18, (112, 112), 512, 256, 300)
    assert 28 * 2 ** 30 < need < 40 * 2 ** 30  # 64 MB per image measured at batch 8 and 32
    assert estimate_step_memory(18, (112, 112), 512, dtype='bfloat16') < 0.6 * need
    monkeypatch.setattr(recipe, 'available_memory', lambda: 2 ** 30)  # 1 GB left
    spy = Spy(monkeypatch)
    with pytest.raises(gaf.ConfigError, match=r'batch of 512 needs about .* GB.*'
                                              r'--batch-size \d+ or less, --amp'):
        recipe.fit(config.TrainConfig(data_dir=tiny, val_targets=(SYNTHETIC_VAL,),
                                      output=str(tmp_path / 'run'), image_size=(112, 112)))
    assert not spy.calls  # nothing started
    lines = []
    monkeypatch.setattr(recipe, 'available_memory',
                        lambda: int(1.1 * estimate_step_memory(18, (16, 16), 8, 16, 6)))
    monkeypatch.setattr(recipe, 'log_to_file', _Capture(lines))
    recipe.fit(config.TrainConfig(data_dir=tiny, val_targets=(), output=str(tmp_path / 'r2'),
                                  batch_size=8, emb_size=16, epochs=1, progress=False,
                                  export=False))
    assert any(line.startswith('warning: a training step') for line in lines)


class _Capture:
    """Stands in for cli.log_to_file: collects the lines."""

    def __init__(self, lines):
        self.lines = lines

    def __call__(self, path, enabled=True):
        return self

    def __enter__(self):
        return lambda *parts: self.lines.append(' '.join(str(p) for p in parts))

    def __exit__(self, *exc):
        return False
