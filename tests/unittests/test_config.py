"""TrainConfig: each setting named once; the parser built from it; recipes; the round trip
through config.json and --resume."""
import argparse
import dataclasses
import json

import pytest

from gluon_arcface import config
from gluon_arcface.train.config import RECIPES, TrainConfig, build_parser, config_from_args
from gluon_arcface.runtime.errors import ConfigError


def parse(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_defaults_are_the_chapters():
    c = parse()
    assert (c.dataset, c.val_targets, c.num_layers, c.emb_size, c.batch_size, c.lr, c.wd,
            c.momentum, c.epochs, c.loss, c.margin_s, c.augment, c.lr_schedule) == \
        ('faces-casia-ultrasmall', ('lfw_small',), 18, 256, 512, 0.1, 5e-4, 0.0, 5, 'arcface',
         64.0, 'flip', 'step')
    assert c == TrainConfig()


def test_every_field_has_a_flag_and_help():
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(TrainConfig):
        assert field.name in flags, field.name
        assert '(default: ' in flags[field.name].help, field.name


def test_flags_parse_into_the_fields():
    c = parse('--val-targets', 'lfw,cfp_fp', '--lr-steps', '3,4', '--image-size', '64',
              '--margin-s', 'adacos', '--aug-crop-scale', '0.3,0.9', '--nesterov',
              '--no-progress', '--dropout', '0.2', '--margin-warmup', '2.5')
    assert c.val_targets == ('lfw', 'cfp_fp') and c.lr_steps == (3, 4)
    assert c.image_size == (64, 64) and c.margin_s == 'adacos'
    assert c.aug_crop_scale == (0.3, 0.9) and c.nesterov and not c.progress
    assert c.dropout == 0.2 and c.margin_warmup == 2.5
    assert parse('--image-size', '112,96').image_size == (112, 96)
    assert parse('--margin-s', '16').margin_s == 16.0
    assert c.augment_settings().crop_scale == (0.3, 0.9)
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--image-size', '100'])  # not a multiple of 16
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--margin-s', 'big'])


def test_recipes_fill_only_what_is_not_given():
    for name, values in RECIPES.items():
        c = parse('--recipe', name)
        for key, value in values.items():
            assert getattr(c, key) == value, (name, key)
        if values:
            key = sorted(values)[0]
            flag = '--' + key.replace('_', '-')
            field = {f.name: f for f in dataclasses.fields(TrainConfig)}[key]
            if isinstance(field.default, bool):
                continue
            explicit = config_from_args(argparse.Namespace(recipe=name, **{key: field.default}))
            assert getattr(explicit, key) == field.default, flag
    assert 'small-data' in RECIPES


def test_round_trip_through_json(tmp_path):
    c = parse('--recipe', 'small-data', '--image-size', '80', '--aug-gray', '0.3',
              '--lr-steps', '2')
    text = json.dumps({'settings': c.to_dict()})
    back = TrainConfig.from_dict(json.loads(text)['settings'])
    assert back == c
    with pytest.raises(ConfigError, match='unknown setting.*colour'):
        TrainConfig.from_dict(dict(c.to_dict(), colour=1))


def test_resume_reads_the_runs_settings(tmp_path):
    first = parse('--output', str(tmp_path), '--emb-size', '64', '--lr', '0.05',
                  '--recipe', 'small-data')
    (tmp_path / 'config.json').write_text(json.dumps({'settings': first.to_dict()}))
    resumed = parse('--output', str(tmp_path), '--resume', '--epochs', '9')
    assert resumed.emb_size == 64 and resumed.lr == 0.05 and resumed.recipe == 'small-data'
    assert resumed.epochs == 9 and resumed.resume
    assert dataclasses.replace(resumed, epochs=first.epochs, resume=False) == first
    (tmp_path / 'config.json').write_text('{"settings": 3}')
    with pytest.raises(ConfigError, match='config.json'):
        parse('--output', str(tmp_path), '--resume')


def test_max_samples_caps_the_epochs():
    c = TrainConfig(epochs=20, max_samples=36000)
    assert [c.epochs_for(n) for n in (500, 1775, 3000, 7000, 10 ** 6)] == [20, 20, 12, 5, 1]
    assert TrainConfig(epochs=20).epochs_for(10 ** 6) == 20  # 0: no limit (the chapter's)
    assert TrainConfig().max_samples == 0 and RECIPES['small-data']['max_samples'] == 36000


def test_bad_values_are_config_errors():
    for bad in (dict(loss='triplet'), dict(recipe='huge'), dict(batch_size=0), dict(max_samples=-1),
                dict(aug_flip=2.0), dict(dropout=1.0), dict(warmup_epochs=-1)):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_help_lists_the_recipe_values_beside_the_defaults():
    text = ' '.join(build_parser().format_help().split())
    for name in ('small-data', 'finetune'):
        for key, value in RECIPES[name].items():
            shown = ','.join(map(str, value)) if isinstance(value, tuple) else str(value)
            assert '%s: %s' % (name, shown) in text, (name, key)
    table = config.recipe_table()
    assert table.startswith('| setting | chapter | small-data | finetune |')
    changed = set(RECIPES['small-data']) | set(RECIPES['finetune'])
    assert len(table.strip().splitlines()) == 2 + len(changed)
    one = config.recipe_table(['small-data'])
    assert len(one.strip().splitlines()) == 2 + len(RECIPES['small-data'])
