"""The training settings, named once: :class:`TrainConfig` and the named recipes.

Every setting of ``scripts/train.py`` / :func:`gluon_arcface.recipe.fit` is a field of
``TrainConfig`` with its default (the chapter's value), its help text and its command-line
flag; the parser is built from the fields (:func:`build_parser`), ``fit`` takes the object, and
``config.json`` holds it (:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`).

``RECIPES`` names sets of values: ``chapter`` (the defaults, unchanged) and others that change
some fields; a setting given explicitly (a flag, a keyword) overrides the recipe's value.

This module imports neither MXNet nor anything that does.
"""
import argparse
import dataclasses
import json
import os
import typing

from .errors import ConfigError
from .threads import THREADS_DEFAULT, THREADS_HELP

__all__ = ['TrainConfig', 'RECIPES', 'SYNTHETIC_VAL', 'LOSSES', 'build_parser',
           'config_from_args', 'read_run_config', 'resolve_config', 'recipe_table']

SYNTHETIC_VAL = 'synthetic_val'  # the verification set of faces-synthetic
LOSSES = ('arcface', 'cosface', 'sphereface', 'softmax')
KVSTORES = ('device', 'local', 'dist_sync', 'dist_device_sync', 'dist_async')


def _setting(default, help, group, flag=None, choices=None, metavar=None, parse=None,
             default_text=None):
    """A TrainConfig field: its default, help, argparse group and how the flag parses;
    ``default_text`` says what a default of None means."""
    meta = dict(help=help, group=group, flag=flag, choices=choices, metavar=metavar, parse=parse,
                default_text=default_text)
    if isinstance(default, (list, dict)):
        raise TypeError('use a tuple for sequence defaults')
    return dataclasses.field(default=default, metadata=meta)


def _comma_list(text):
    return tuple(t.strip() for t in text.split(',') if t.strip())


def _int_list(text):
    try:
        return tuple(int(t) for t in _comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated integers, got %r'
                                         % text) from None


def _scale(text):
    """--margin-s: a number, 'auto' (fixed AdaCos) or 'adacos' (dynamic AdaCos)."""
    if text in ('auto', 'adacos'):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, 'auto' or 'adacos', got %r"
                                         % text) from None


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs; the defaults are the chapter's."""

    # ---- data
    dataset: str = _setting(
        'faces-casia-ultrasmall', 'dataset hub name (faces-casia-ultrasmall, faces-casia-small, '
        'faces-synthetic)', 'data')
    data_dir: typing.Optional[str] = _setting(
        None, 'your own dataset folder (property, train.rec/.idx or %08d folders, '
        '<target>.bin); overrides --dataset', 'data', metavar='DIR', default_text='--dataset')
    val_targets: typing.Tuple[str, ...] = _setting(
        ('lfw_small',), 'comma-separated verification sets (<name>.bin in the data folder)',
        'data', parse=_comma_list, metavar='A,B')
    num_workers: typing.Optional[int] = _setting(
        None, 'image decoding threads', 'data',
        default_text='sized with the compute threads, see --threads')
    skip_bad: bool = _setting(
        False, 'replace images that do not decode by the next good one and list them '
        '(train.log, metrics.json) instead of stopping', 'data')

    # ---- model
    num_layers: int = _setting(18, 'FaceResNet depth', 'model', choices=(18, 34, 50, 100))
    emb_size: int = _setting(256, 'embedding size', 'model')
    loss: str = _setting(
        'arcface', 'margin preset: arcface (m=0.5), cosface (b=0.35), sphereface (a=1.35) or a '
        'plain softmax head', 'model', choices=LOSSES)
    margin_s: typing.Union[float, str] = _setting(
        64.0, 'logit scale s', 'model', parse=_scale, metavar='S')
    margin_m: typing.Optional[float] = _setting(
        None, 'additive angular margin m', 'model', default_text="the loss's preset")
    margin_a: typing.Optional[float] = _setting(
        None, 'multiplicative angular margin a', 'model', default_text="the loss's preset")
    margin_b: typing.Optional[float] = _setting(
        None, 'additive cosine margin b', 'model', default_text="the loss's preset")

    # ---- optimisation
    batch_size: int = _setting(
        512, 'total batch size, split over the workers (--kvstore dist_*), then over the '
        'devices', 'optimisation')
    lr: float = _setting(0.1, 'SGD learning rate', 'optimisation')
    wd: float = _setting(5e-4, 'weight decay', 'optimisation')
    momentum: float = _setting(0.0, 'SGD momentum (the chapter uses none)', 'optimisation')
    epochs: int = _setting(5, 'training epochs', 'optimisation')
    lr_steps: typing.Tuple[int, ...] = _setting(
        (), 'comma-separated epochs after which the LR is multiplied by 0.1, e.g. "3,4"',
        'optimisation', parse=_int_list, metavar='E1,E2')
    seed: typing.Optional[int] = _setting(None, 'random seed', 'optimisation',
                                          default_text='not seeded')

    # ---- run
    recipe: str = _setting(
        'chapter', 'named set of values for the settings not given explicitly (see the '
        'README table)', 'run', choices=('chapter',))
    ctx: typing.Optional[str] = _setting(
        None, 'devices: cpu, cpu:0,cpu:1 or gpu:0,gpu:1', 'run',
        default_text='all GPUs, else the CPU')
    threads: typing.Optional[int] = _setting(
        None, THREADS_HELP, 'run', default_text=THREADS_DEFAULT, metavar='N')
    kvstore: str = _setting(
        'device', 'device or local on one machine; dist_sync, dist_device_sync or dist_async '
        'across machines, started by scripts/launch.py', 'run', choices=KVSTORES)
    model_parallel: bool = _setting(
        False, 'split fc7 over the devices (--ctx) in class ranges, for many identities; one '
        'machine', 'run')
    output: str = _setting('runs/train', 'run folder', 'run')
    verify_every: int = _setting(1, 'verify every k epochs', 'run')
    resume: bool = _setting(
        False, 'continue from the latest checkpoint in OUTPUT/checkpoints, with the settings '
        'of OUTPUT/config.json (flags given now override them)', 'run')
    progress: bool = _setting(True, 'progress bar', 'run')
    export: bool = _setting(True, 'export the embedding network into OUTPUT/model', 'run')

    def __post_init__(self):
        self.val_targets = tuple(self.val_targets)
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        if self.loss not in LOSSES:
            raise ConfigError('unknown loss %r: expected one of %s' % (self.loss,
                                                                    ', '.join(LOSSES)))
        if self.recipe not in RECIPES:
            raise ConfigError('unknown recipe %r: expected one of %s'
                              % (self.recipe, ', '.join(RECIPES)))
        for name in ('batch_size', 'epochs', 'emb_size', 'verify_every'):
            if getattr(self, name) < 1:
                raise ConfigError('%s must be at least 1, got %r' % (name, getattr(self, name)))

    def to_dict(self):
        """The settings as JSON-ready values (tuples become lists)."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, values, source='settings'):
        """The inverse of :meth:`to_dict`; an unknown name is a ConfigError naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError('%s: unknown setting(s) %s' % (source, ', '.join(unknown)))
        return cls(**values)


# Named sets of values. 'chapter' is the defaults; each other recipe lists only what it changes.
RECIPES = {
    'chapter': {},
}


def _fields():
    return dataclasses.fields(TrainConfig)


def _flag(field):
    return field.metadata.get('flag') or '--' + field.name.replace('_', '-')


def _show(value):
    if isinstance(value, tuple):
        return ','.join(str(v) for v in value) or 'none'
    return 'none' if value is None else str(value)


def _help(field):
    default = field.metadata.get('default_text') or _show(field.default)
    if field.default is False or field.default is True:
        default = 'on' if field.default else 'off'
    text = '%s (default: %s' % (field.metadata['help'], default)
    for name, values in RECIPES.items():
        if field.name in values:
            text += '; %s: %s' % (name, _show(values[field.name]))
    return (text + ')').replace('%', '%%')


def build_parser(description=None):
    """An argparse parser with one flag per TrainConfig field, grouped as the fields are.

    Flags not given are absent from the parsed namespace (``argparse.SUPPRESS``), so that
    :func:`config_from_args` can tell them from the defaults.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {}
    hints = typing.get_type_hints(TrainConfig)
    for field in _fields():
        group_name = field.metadata['group']
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        group = groups[group_name]
        kind = hints[field.name]
        options = dict(dest=field.name, default=argparse.SUPPRESS, help=_help(field))
        if kind is bool:
            if field.default:
                group.add_argument('--no-' + field.name.replace('_', '-'), action='store_false',
                                   **options)
            else:
                group.add_argument(_flag(field), action='store_true', **options)
            continue
        parse = field.metadata.get('parse')
        if parse is None:
            base = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
            parse = base[0] if base[0] in (int, float, str) else str
        group.add_argument(_flag(field), type=parse, choices=field.metadata.get('choices'),
                           metavar=field.metadata.get('metavar'), **options)
    return parser


def resolve_config(explicit=None, saved=None):
    """The settings of a run: defaults, then the recipe's values, then ``saved`` (a resumed
    run's settings, a dict), then ``explicit`` (what the user gave) -> TrainConfig."""
    explicit = dict(explicit or {})
    values = {}
    name = explicit.get('recipe', (saved or {}).get('recipe', 'chapter'))
    if name not in RECIPES:
        raise ConfigError('unknown recipe %r: expected one of %s' % (name, ', '.join(RECIPES)))
    values.update(RECIPES[name])
    values.update(saved or {})
    values.update(explicit)
    values['recipe'] = name
    return TrainConfig.from_dict(values)


def read_run_config(output):
    """The settings saved in ``output/config.json`` (a dict), or None when there is none."""
    path = os.path.join(output, 'config.json')
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            settings = json.load(f)['settings']
        if not isinstance(settings, dict):
            raise ValueError('"settings" is not an object')
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ConfigError('%s: expected the JSON a run writes, with its "settings" (%s)'
                          % (path, e)) from None
    return settings


def config_from_args(args):
    """TrainConfig from a namespace of :func:`build_parser`: only the flags given count; with
    ``--resume`` the settings of OUTPUT/config.json come before them."""
    names = {f.name for f in _fields()}
    explicit = {k: v for k, v in vars(args).items() if k in names}
    saved = None
    if explicit.get('resume'):
        saved = read_run_config(explicit.get('output', TrainConfig.output))
    return resolve_config(explicit, saved)


def recipe_table(names=None):
    """A markdown table of the settings each recipe changes, beside the chapter's defaults."""
    names = [n for n in (names or RECIPES) if n != 'chapter']
    changed = [f for f in _fields() if any(f.name in RECIPES[n] for n in names)]
    head = ['setting', 'chapter'] + names
    lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
    for f in changed:
        row = ['`%s`' % _flag(f), _show(f.default)]
        row += [_show(RECIPES[n].get(f.name, f.default)) for n in names]
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines) + '\n'
