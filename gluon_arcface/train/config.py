"""The training settings, named once: :class:`TrainConfig` and the named recipes.

Every setting of ``scripts/train.py`` / :func:`gluon_arcface.train.recipe.fit` is a field of
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
import textwrap
import typing

from ..data.augment import AUGMENT_PRESET_NAMES
from ..data.synthetic import SYNTHETIC_VAL  # the verification set of faces-synthetic
from ..runtime.errors import ConfigError
from ..runtime.threads import THREADS_DEFAULT, THREADS_HELP
from .schedules import LR_SCHEDULES

__all__ = ['TrainConfig', 'RECIPES', 'SYNTHETIC_VAL', 'LOSSES', 'build_parser',
           'config_from_args', 'read_run_config', 'resolve_config', 'recipe_table']

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


def _size(text):
    """--image-size: S (square) or H,W."""
    try:
        values = tuple(int(t) for t in _comma_list(text))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 16 or any(v % 16 for v in values):
        raise argparse.ArgumentTypeError('expected S or H,W with multiples of 16 (four stride-2 '
                                         'stages), got %r' % text)
    return values


def _float_pair(text):
    try:
        values = tuple(float(t) for t in _comma_list(text))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError('expected LOW,HIGH, got %r' % text)
    return values


def _aug(help, pair=False):
    """An augmentation knob: None means the --augment preset's value."""
    return _setting(None, help, 'augmentation', parse=_float_pair if pair else None,
                    metavar='LOW,HIGH' if pair else None, default_text='from --augment')


def _scale(text):
    """--margin-s: a number, 'auto' (fixed AdaCos) or 'adacos' (dynamic AdaCos)."""
    if text in ('auto', 'adacos'):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, 'auto' or 'adacos', got %r"
                                         % text) from None


# Named sets of values. 'chapter' is the defaults; each other recipe lists only what it changes.
RECIPES = {
    'chapter': {},
    # A few thousand photos of tens of people on a laptop (docs/own_photos.md).
    # Augmentation stays the chapter's flip: 'standard' measured lower on both few-identity checks.
    'small-data': dict(image_size=(64, 64), emb_size=128, batch_size=64, momentum=0.9,
                       nesterov=True, lr_schedule='cosine', warmup_epochs=1.0, margin_s='auto',
                       margin_warmup=2.0, epochs=20, max_samples=36000, verify_every=5),
    # A pretrained face model adapted to tens of people (docs/pretrained.md): a new
    # head learns first on the fixed network, then both at a low rate;
    # the best epoch is chosen on held-out training identities.
    'finetune': dict(pretrained='dlib-resnet-v1', batch_size=64, momentum=0.9,
                     lr_schedule='cosine', freeze_epochs=1.0, backbone_lr_mult=0.001,
                     margin_s='auto', epochs=8, max_samples=16000, holdout=0.2),
}


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
    image_size: typing.Optional[typing.Tuple[int, ...]] = _setting(
        None, 'network input size: S or H,W; training and verification images are resized to '
        'it', 'data', parse=_size, metavar='S|H,W', default_text="the data's size (property)")

    # ---- augmentation
    augment: str = _setting(
        'flip', 'augmentation preset: none, flip (the chapter: random left-right flip) or '
        'standard (flip, and with small probabilities rotation, in-place crop, low resolution, '
        'colour jitter, greyscale); the --aug-* flags change single values', 'augmentation',
        choices=tuple(AUGMENT_PRESET_NAMES))
    aug_flip: typing.Optional[float] = _aug('probability of a left-right flip')
    aug_rotate: typing.Optional[float] = _aug('probability of a rotation')
    aug_rotate_deg: typing.Optional[float] = _aug('largest rotation (degrees)')
    aug_crop: typing.Optional[float] = _aug('probability of an in-place random crop')
    aug_crop_scale: typing.Optional[typing.Tuple[float, ...]] = _aug(
        'range of the area fraction the crop keeps', pair=True)
    aug_crop_ratio: typing.Optional[typing.Tuple[float, ...]] = _aug(
        "range of the crop's aspect ratio", pair=True)
    aug_lowres: typing.Optional[float] = _aug('probability of low resolution (down and up)')
    aug_lowres_scale: typing.Optional[typing.Tuple[float, ...]] = _aug(
        'range of the side fraction it goes down to', pair=True)
    aug_color: typing.Optional[float] = _aug('probability of colour jitter')
    aug_brightness: typing.Optional[float] = _aug('brightness jitter x: factor in [1-x, 1+x]')
    aug_contrast: typing.Optional[float] = _aug('contrast jitter x')
    aug_saturation: typing.Optional[float] = _aug('saturation jitter x')
    aug_gray: typing.Optional[float] = _aug('probability of greyscale')

    # ---- model
    num_layers: int = _setting(18, 'FaceResNet depth', 'model', choices=(18, 34, 50, 100))
    emb_size: int = _setting(256, 'embedding size', 'model')
    loss: str = _setting(
        'arcface', 'margin preset: arcface (m=0.5), cosface (b=0.35), sphereface (a=1.35) or a '
        'plain softmax head', 'model', choices=LOSSES)
    margin_s: typing.Union[float, str] = _setting(
        64.0, "logit scale s; 'auto': fixed AdaCos sqrt(2)*ln(C-1) for C identities; "
        "'adacos': dynamic AdaCos, updated every step", 'model', parse=_scale, metavar='S')
    margin_m: typing.Optional[float] = _setting(
        None, 'additive angular margin m', 'model', default_text="the loss's preset")
    margin_a: typing.Optional[float] = _setting(
        None, 'multiplicative angular margin a', 'model', default_text="the loss's preset")
    margin_b: typing.Optional[float] = _setting(
        None, 'additive cosine margin b', 'model', default_text="the loss's preset")
    margin_warmup: float = _setting(
        0.0, 'epochs over which the margin (m, b, a-1) ramps from none to its value, per step',
        'model', metavar='E')
    margin_hold: float = _setting(
        0.0, 'epochs without margin (a normalised softmax) before the ramp', 'model',
        metavar='E')
    dropout: typing.Optional[float] = _setting(
        None, 'dropout rate before the embedding layer', 'model',
        default_text='0.4 with at most 20000 identities, else none (the chapter)')

    # ---- optimisation
    batch_size: int = _setting(
        512, 'total batch size, split over the workers (--kvstore dist_*), then over the '
        'devices', 'optimisation')
    lr: float = _setting(0.1, 'SGD learning rate', 'optimisation')
    wd: float = _setting(5e-4, 'weight decay', 'optimisation')
    momentum: float = _setting(0.0, 'SGD momentum (the chapter uses none)', 'optimisation')
    nesterov: bool = _setting(False, 'Nesterov momentum (MXNet\'s NAG optimizer)',
                              'optimisation')
    epochs: int = _setting(5, 'training epochs', 'optimisation')
    max_samples: int = _setting(
        0, 'fewer epochs when the data is large: at most this many training images seen over '
        'the run (epochs x images; at least one epoch); 0: no limit', 'optimisation',
        metavar='N')
    lr_schedule: str = _setting(
        'step', 'step: x0.1 after each epoch of --lr-steps; cosine: half a cosine down to 0 at '
        'the end', 'optimisation', choices=LR_SCHEDULES)
    lr_steps: typing.Tuple[int, ...] = _setting(
        (), 'comma-separated epochs after which the LR is multiplied by 0.1, e.g. "3,4"',
        'optimisation', parse=_int_list, metavar='E1,E2')
    warmup_epochs: float = _setting(
        0.0, 'epochs of linear learning-rate warm-up, per step', 'optimisation', metavar='E')
    seed: typing.Optional[int] = _setting(None, 'random seed', 'optimisation',
                                          default_text='not seeded')
    amp: bool = _setting(
        False, 'mixed precision: the backbone in bfloat16 on CPUs with AVX512-BF16 or AMX, in '
        'float16 (with dynamic loss scaling) on GPUs; float32 master weights, BatchNorm '
        'statistics, head and loss', 'optimisation')

    # ---- fine-tuning
    pretrained: typing.Optional[str] = _setting(
        None, 'start the backbone from a named pretrained model (dlib-resnet-v1: its network '
        'replaces FaceResNet, 128-d), a run folder, a checkpoint (.params), an exported model '
        '(PREFIX or PREFIX-symbol.json) or an InsightFace checkpoint (PREFIX,EPOCH); the head '
        'is new', 'fine-tuning', metavar='NAME|PATH', default_text='random initialisation')
    backbone_lr_mult: float = _setting(
        1.0, "the backbone's learning rate as a multiple of --lr", 'fine-tuning', metavar='X')
    freeze_epochs: float = _setting(
        0.0, 'epochs during which only the head learns (the backbone stays as loaded)',
        'fine-tuning', metavar='E')
    holdout: float = _setting(
        0.0, 'fraction of the training identities (at least 2) left out of training and '
        'verified as "holdout" after each epoch; the run keeps its best epoch by them',
        'fine-tuning', metavar='F')

    # ---- run
    recipe: str = _setting(
        'chapter', 'named set of values for the settings not given explicitly (their values: '
        'docs/own_photos.md, docs/pretrained.md)', 'run', choices=tuple(RECIPES))
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
    progress: bool = _setting(True, 'the progress bar', 'run')
    export: bool = _setting(True, 'the export of the embedding network into OUTPUT/model', 'run')

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
        for name in ('warmup_epochs', 'margin_warmup', 'margin_hold', 'freeze_epochs',
                     'backbone_lr_mult', 'wd', 'momentum', 'max_samples'):
            if getattr(self, name) < 0:
                raise ConfigError('%s must be >= 0, got %r' % (name, getattr(self, name)))
        if not 0 <= self.holdout < 1:
            raise ConfigError('holdout must be a fraction in [0, 1), got %r' % self.holdout)
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError('dropout must be in [0, 1), got %r' % self.dropout)
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), list):  # from config.json
                setattr(self, f.name, tuple(getattr(self, f.name)))
        self.augment_settings()  # checks the augmentation values

    def epochs_for(self, images):
        """The epochs a run over ``images`` training images makes: ``epochs``, lowered by
        ``max_samples`` (never below one)."""
        if not self.max_samples:
            return self.epochs
        return max(1, min(self.epochs, self.max_samples // images))

    def augment_settings(self):
        """The :class:`~gluon_arcface.data.augment.AugmentSettings` of ``--augment`` and the
        ``--aug-*`` values given."""
        from ..data.augment import augment_settings
        knobs = {f.name[len('aug_'):]: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name.startswith('aug_')}
        try:
            return augment_settings(self.augment, **knobs)
        except ValueError as e:
            raise ConfigError('augmentation: %s' % e) from None

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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines wrapped at spaces only: names such as faces-casia-ultrasmall stay whole."""

    def _split_lines(self, text, width):
        return textwrap.wrap(' '.join(text.split()), width, break_on_hyphens=False)


def build_parser(description=None):
    """An argparse parser with one flag per TrainConfig field, grouped as the fields are.

    Flags not given are absent from the parsed namespace (``argparse.SUPPRESS``), so that
    :func:`config_from_args` can tell them from the defaults.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
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
                options['help'] = 'turn off ' + options['help']
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
