"""Verification protocols: the chapter's test_face_11 and InsightFace's 10-fold LFW protocol."""
import os

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, gluon, np
from mxnet.gluon import nn
from scipy.interpolate import BSpline, interp1d

import gluon_arcface.eval.verification as ver
from gluon_arcface.eval.plotting import plot_roc

CTX = [mx.cpu(0), mx.cpu(1)]
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


# ----------------------------------------------------------------------------- helpers

def pairs_with_distances(dist, scale=3.0):
    """(2N, 2) embeddings whose normalised pair i has squared distance dist[i] (rows scaled)."""
    dist = onp.asarray(dist, dtype=float)
    cos = 1 - dist / 2                     # unit vectors: |a - b|^2 = 2 - 2 cos
    emb = onp.zeros((2 * len(dist), 2))
    emb[0::2] = [1.0, 0.0]
    emb[1::2, 0], emb[1::2, 1] = cos, onp.sqrt(1 - cos ** 2)
    return scale * emb


def case_a():
    """20 pairs, 10 folds of two: pair 2f is "same" at 0.3055, pair 2f+1 "different" at 1.0055,
    except a hard positive (pair 0, fold 0) at 1.5055 and a close impostor (pair 7, fold 3) at
    0.1055. Distances sit between the grid points, so no comparison is a float tie."""
    dist = onp.array([0.3055, 1.0055] * 10)
    dist[0], dist[7] = 1.5055, 0.1055
    return dist, onp.array([True, False] * 10)


def case_b():
    """12 pairs (not a multiple of 10): folds {0,1}, {2,3}, {4}, ..., {11}."""
    dist = onp.array([0.3055, 0.6055, 0.7055, 0.5055] + [0.3055, 1.0055] * 4)
    return dist, onp.array([True, False] * 6)


def tiny_net(ctx=CTX, batch_norm=False, bias=True, hybridize=False):
    net = nn.HybridSequential()
    net.add(nn.Flatten())
    if batch_norm:
        net.add(nn.BatchNorm())
    net.add(nn.Dense(8, use_bias=bias))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def face_set(num_pairs, size=8, seed=0):
    """A (data_list, issame) set: second images of "same" pairs are noisy copies of the first."""
    rng = onp.random.RandomState(seed)
    images = rng.uniform(size=(2 * num_pairs, 3, size, size)).astype(onp.float32)
    issame = rng.uniform(size=num_pairs) < 0.5
    noisy = onp.clip(images[0::2] + 0.2 * rng.normal(size=images[0::2].shape), 0, 1)
    images[1::2][issame] = noisy[issame]
    return [images, images[:, :, :, ::-1].copy()], issame


def per_image(net, images):
    """Reference: each image on its own on cpu(0), predict mode."""
    with autograd.predict_mode():
        return onp.concatenate([net(np.array(images[i:i + 1], ctx=CTX[0])).asnumpy()
                                for i in range(len(images))])


# ----------------------------------------------------------------------------- 10-fold protocol

def test_kfold_splits_like_sklearn():
    # KFold(n_splits=10, shuffle=False): consecutive, the first n % 10 folds one larger.
    assert [len(t) for _, t in ver.kfold_splits(23)] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    splits = ver.kfold_splits(12)
    assert [t.tolist() for _, t in splits[:3]] == [[0, 1], [2, 3], [4]]
    for train, test in splits:
        assert sorted(train.tolist() + test.tolist()) == list(range(12))


def test_kfold_roc_hand_case():
    # Case A, grid 0.00, 0.01, ... ("same" when dist < t).
    # Fold 0 out: the other nine hold the impostor 0.1055; training accuracy is 17/18 on the whole
    #   plateau t in (0.3055, 1.0055], so the first best t is 0.31. Held out: the hard positive
    #   1.5055 is missed, the impostor-free negative is right: 1/2.
    # Fold 3 out: the training folds hold the hard positive; best again from 0.31 (17/18).
    #   Held out: positive 0.3055 right, impostor 0.1055 < 0.31 accepted: 1/2.
    # Other folds: 16/18 on the plateau, first best 0.31; both held-out pairs right: 1.
    # Mean 0.9; population std sqrt((2 * 0.4^2 + 8 * 0.1^2) / 10) = 0.2; thresholds all 0.31.
    dist, issame = case_a()
    tpr, fpr, accs, thrs = ver.kfold_roc(dist, issame)
    onp.testing.assert_allclose(accs, [0.5, 1, 1, 0.5, 1, 1, 1, 1, 1, 1])
    onp.testing.assert_allclose(thrs, 0.31)
    assert accs.mean() == pytest.approx(0.9) and accs.std() == pytest.approx(0.2)
    assert tpr.shape == fpr.shape == (400,)
    # At t = 0.31 (index 31): TPR 1 except fold 0 (0/1); FPR 0 except fold 3 (1/1).
    assert tpr[31] == pytest.approx(0.9) and fpr[31] == pytest.approx(0.1)
    assert tpr[0] == fpr[0] == 0 and tpr[-1] == fpr[-1] == 1


def test_kfold_roc_ties_and_uneven_folds():
    # Case B: 12 pairs, folds {0,1}, {2,3}, {4}, ..., {11}.
    # Fold 0 out (train = pairs 2..11: same 0.7055 and 4 x 0.3055, different 0.5055 and
    #   4 x 1.0055): accuracy 9/10 on (0.3055, 0.5055], 8/10 on (0.5055, 0.7055], 9/10 again on
    #   (0.7055, 1.0055]: a tie, the first best (0.31) is kept. Held out: 0.3055 same accepted,
    #   0.6055 different rejected: 1. (Keeping the last best, 1.00, would accept 0.6055: 1/2.)
    # Fold 1 out (train: same 5 x 0.3055, different 0.6055 and 4 x 1.0055): perfect from 0.31.
    #   Held out: same 0.7055 rejected (wrong), different 0.5055 rejected (right): 1/2.
    # Singleton folds (pairs 4..11): wrong counts 1, 2, 3, 2 on the four plateaus: 0.31; right.
    # Mean 0.95, std sqrt((9 * 0.05^2 + 0.45^2) / 10) = 0.15.
    dist, issame = case_b()
    tpr, fpr, accs, thrs = ver.kfold_roc(dist, issame)
    onp.testing.assert_allclose(accs, [1, 0.5] + [1] * 8)
    onp.testing.assert_allclose(thrs, 0.31)
    assert accs.mean() == pytest.approx(0.95) and accs.std() == pytest.approx(0.15)
    # A fold without positives (negatives) counts TPR (FPR) 0, as InsightFace does.
    # t = 0.31: TPR 1 in fold 0 and the 4 "same" singletons -> 5/10; FPR 0 everywhere.
    # t = 1.00: TPR 1 in folds 0, 1 and the 4 "same" singletons -> 6/10; FPR 1 in folds 0, 1.
    assert (tpr[31], fpr[31]) == pytest.approx((0.5, 0.0))
    assert (tpr[100], fpr[100]) == pytest.approx((0.6, 0.2))


def test_kfold_val_hand_cases():
    # Case A, grid step 0.001, target FAR 1e-3 (FAR_train is k / #negatives, "same" if dist < t).
    # Fold 0 out: training negatives 8 x 1.0055 + 0.1055: FAR 0 up to t = 0.105, 1/9 from 0.106,
    #   threshold 0.105 + (1e-3 / (1/9)) * 0.001 = 0.105009: hard positive rejected (TAR 0), FAR 0.
    # Fold 3 out: negatives 9 x 1.0055: threshold 1.005001; TAR 1, the impostor accepted: FAR 1.
    # Other folds: negatives 8 x 1.0055 + 0.1055: threshold 0.105008: TAR 0, FAR 0.
    # TAR mean 0.1, std sqrt(0.1 - 0.01) = 0.3; FAR mean 0.1.
    assert ver.kfold_val(*case_a()) == pytest.approx((0.1, 0.3, 0.1))
    # Case B. Fold 0: negatives 0.5055 + 4 x 1.0055 -> 0.505005: TAR 1, FAR 0.
    # Fold 1: negatives 0.6055 + 4 x 1.0055 -> 0.605005: TAR 0 (0.7055), FAR 1 (0.5055).
    # "Same" singletons: threshold 0.505006, TAR 1, FAR 0 (no negatives).
    # "Different" singletons: 0.505005, FAR 0 (1.0055 rejected), TAR 0 (no positives).
    # TAR [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]: mean 0.5, std 0.5; FAR mean 0.1.
    assert ver.kfold_val(*case_b()) == pytest.approx((0.5, 0.5, 0.1))


def test_threshold_at_far_hand_value():
    # Fold 0 of case A: FAR 0 up to index 105 (t = 0.105), 1/9 up to 1005, then 1.
    far = onp.zeros(4000)
    far[106:1006], far[1006:] = 1 / 9, 1.0
    assert ver.threshold_at_far(far, ver.VAL_THRESHOLDS, 1e-3) == pytest.approx(0.105009)
    # Exactly on a flat run: its last threshold; the maximum: the first threshold reaching it.
    assert ver.threshold_at_far(far, ver.VAL_THRESHOLDS, 1 / 9) == pytest.approx(1.005)
    assert ver.threshold_at_far(far, ver.VAL_THRESHOLDS, 1.0) == pytest.approx(1.006)
    with pytest.raises(ValueError, match='outside'):
        ver.threshold_at_far(far[:100], ver.VAL_THRESHOLDS[:100], 1e-3)


def test_threshold_at_far_matches_scipy_slinear():
    rng = onp.random.RandomState(1)
    thresholds = ver.VAL_THRESHOLDS
    # Strictly increasing FAR: today's interp1d(kind='slinear') accepts it.
    far = onp.sort(rng.uniform(size=len(thresholds)))
    far[0] = 0.0
    for target in (1e-3, 0.3, far[7]):
        expected = float(interp1d(far, thresholds, kind='slinear')(target))
        assert ver.threshold_at_far(far, thresholds, target) == pytest.approx(expected)
    # Real FAR curves repeat values, which SciPy >= 1.9 rejects; SciPy <= 1.8 built this
    # degree-1 spline (knots x0, x..., x_last; coefficients y). Compare with it.
    dist = onp.concatenate([rng.uniform(0.5, 3.5, 300), rng.uniform(1.2, 1.3, 50)])
    far = (dist[None, :] < thresholds[:, None]).mean(1)
    old_slinear = BSpline.construct_fast(onp.r_[far[0], far, far[-1]], thresholds.copy(), 1)
    for target in (1e-3, 0.01, 0.1, 0.5, far[2000]):
        assert ver.threshold_at_far(far, thresholds, target) == pytest.approx(
            float(old_slinear(target)), abs=1e-12)


def test_evaluate_embeddings_hand_case():
    # Case A as (scaled) embeddings: the numbers of the tests above, plus the chapter's search on
    # cosine similarities 1 - d / 2: same 0.84725 (hard positive 0.24725), different 0.49725
    # (impostor 0.94725). Best 18/20 on [0.49725, 0.84725), the first grid point 0.4975.
    dist, issame = case_a()
    result = ver.evaluate_embeddings(pairs_with_distances(dist), issame)
    assert result.accuracy == pytest.approx(0.9) and result.std == pytest.approx(0.2)
    assert result.threshold == pytest.approx(0.31)
    assert result.cos_threshold == pytest.approx(1 - 0.31 / 2)
    onp.testing.assert_allclose(result.fold_accuracies, [0.5, 1, 1, 0.5, 1, 1, 1, 1, 1, 1])
    assert (result.tar_at_far, result.tar_std, result.far) == pytest.approx((0.1, 0.3, 0.1))
    assert result.best_threshold_accuracy == pytest.approx(0.9)
    assert result.best_threshold == ver.FACE_11_THRESHOLDS[199]
    assert result.xnorm == pytest.approx(3.0)
    assert result.num_pairs == 20 and result.far_target == 1e-3
    assert 'acc 90.00±20.00%' in result.summary()


def test_separable_and_random_embeddings():
    rng = onp.random.RandomState(0)
    n = 200
    base = rng.uniform(0, 2 * onp.pi, n)
    issame = rng.uniform(size=n) < 0.5
    # "same": a tiny rotation; "different": 90 to 180 degrees (squared distance 2 to 4).
    turn = onp.where(issame, rng.uniform(0, 0.01, n), rng.uniform(onp.pi / 2, onp.pi, n))
    emb = onp.zeros((2 * n, 2))
    emb[0::2] = onp.stack([onp.cos(base), onp.sin(base)], 1)
    emb[1::2] = onp.stack([onp.cos(base + turn), onp.sin(base + turn)], 1)
    good = ver.evaluate_embeddings(emb, issame)
    assert good.accuracy == 1.0 and good.std == 0.0 and good.best_threshold_accuracy == 1.0
    # The FAR threshold lands just below the smallest training impostor distance, so a held-out
    # impostor even closer can still pass: FAR is small, not necessarily 0.
    assert good.tar_at_far == 1.0 and good.far < 0.05

    emb = rng.normal(size=(1200, 32))
    issame = rng.uniform(size=600) < 0.5
    chance = ver.evaluate_embeddings(emb, issame)
    assert abs(chance.accuracy - 0.5) < 0.07
    assert chance.tar_at_far < 0.05
    assert abs(onp.trapz(chance.tpr, chance.fpr) - 0.5) < 0.07  # AUC


# ----------------------------------------------------------------------------- chapter protocol

def test_best_threshold_accuracy_hand_case():
    # "same" when sim > t. Same pairs 0.901, 0.351, 0.601; different 0.101, 0.401, 0.801.
    # Accuracy 3/6 below 0.101, 4/6 on [0.101, 0.351), 3/6, 4/6 on [0.401, 0.601), 3/6,
    # 4/6 on [0.801, 0.901), 3/6: three tied plateaus, the first grid point of the first one
    # is 0.1025 (index 41).
    sim = [0.901, 0.101, 0.351, 0.401, 0.601, 0.801]
    issame = [True, False, True, False, True, False]
    acc, thresh = ver.best_threshold_accuracy(sim, issame)
    assert acc == pytest.approx(4 / 6)
    assert thresh == ver.FACE_11_THRESHOLDS[41] == pytest.approx(0.1025)
    assert ver.best_threshold_accuracy(sim, issame, [0.5, 0.9]) == (pytest.approx(4 / 6), 0.5)
    # Nothing right at any threshold: the chapter's starting values.
    assert ver.best_threshold_accuracy([0.2, 0.9], [True, False], [0.5]) == (0.0, 0.0)


def test_face_11_xnorm_is_the_mean_norm():
    # Pair 0: (3, 0) and (0, 4), cosine 0; pair 1: (1, 1) and (2, 2), cosine 1.
    emb = onp.array([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [2.0, 2.0]])
    xnorm, acc, thresh = ver.face_11(emb, [False, True])
    assert xnorm == pytest.approx((3 + 4 + onp.sqrt(2) + onp.sqrt(8)) / 4)
    assert (acc, thresh) == (1.0, 0.0)  # 0 > 0 is false: pair 0 rejected already at t = 0


def chapter_test_face_11(data_set, test_net, ctx, batch_size):
    """The chapter's test_face_11, copied literally (its globals made arguments): the reference."""
    import numpy
    data_list = data_set[0]
    issame_list = data_set[1]
    embeddings = None
    for i in range( len(data_list) ):
        data = data_list[i]
        cx = np.zeros( (batch_size,)+data.shape[1:] )
        ba = 0
        while ba<data.shape[0]:
            bb = min(ba+batch_size, data.shape[0])
            count = bb-ba
            cx[:count,:,:,:] = data[ba:bb, :,:,:]
            xs = gluon.utils.split_and_load(cx, ctx_list=ctx, batch_axis=0)
            embs = [test_net(x).asnumpy() for x in xs]
            embs = numpy.concatenate(embs, axis=0)
            if embeddings is None:
                embeddings = numpy.zeros( (data.shape[0], embs.shape[1]) )
            embeddings[ba:bb,:] += embs[:count,:]
            ba = bb
    embeddings /= len(data_list)
    xnorm = embeddings*embeddings
    xnorm = numpy.sum(xnorm, axis=1, keepdims=True)
    xnorm = numpy.sqrt(xnorm)
    embeddings /= xnorm
    xnorm = numpy.mean(xnorm)
    emb1 = embeddings[0::2]
    emb2 = embeddings[1::2]
    sim = emb1 * emb2
    sim = numpy.sum(sim, 1)
    thresholds = numpy.arange(0, 1, 0.0025)
    actual_issame = issame_list
    acc_max = 0.0
    thresh = 0.0
    for threshold in thresholds:
        predict_issame = numpy.greater(sim, threshold)
        tp = numpy.sum(numpy.logical_and(predict_issame, actual_issame))
        fp = numpy.sum(numpy.logical_and(predict_issame, numpy.logical_not(actual_issame)))
        tn = numpy.sum(numpy.logical_and(numpy.logical_not(predict_issame), numpy.logical_not(actual_issame)))  # noqa: E501
        fn = numpy.sum(numpy.logical_and(numpy.logical_not(predict_issame), actual_issame))

        tpr = 0 if (tp+fn==0) else float(tp) / float(tp+fn)  # noqa: F841
        fpr = 0 if (fp+tn==0) else float(fp) / float(fp+tn)  # noqa: F841
        acc = float(tp+tn)/predict_issame.size
        if acc>acc_max:
            acc_max = acc
            thresh = threshold
    return xnorm, acc_max, thresh


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_test_face_11_matches_the_chapter(seed):
    # 13 pairs = 26 images, batches of 6 (26 % 6 != 0) split over two CPU contexts.
    mx.random.seed(seed)
    net = tiny_net(batch_norm=True)
    data_list, issame = face_set(13, seed=seed)
    mx_set = ([np.array(v) for v in data_list], issame)
    expected = chapter_test_face_11(mx_set, net, CTX, 6)
    got = ver.test_face_11((data_list, issame), net, CTX, batch_size=6)
    assert got[0] == pytest.approx(expected[0], rel=1e-6)
    assert got[1:] == expected[1:]
    result = ver.verify(mx_set, net, CTX, batch_size=6)
    assert (result.xnorm, result.best_threshold_accuracy, result.best_threshold) == \
        pytest.approx(got)
    assert len(result.fold_accuracies) == 10 and result.num_pairs == 13


# ----------------------------------------------------------------------------- embeddings

def test_compute_embeddings_sums_the_views():
    net = tiny_net(bias=False)
    data_list, _ = face_set(7)
    emb = ver.compute_embeddings(data_list, net, CTX, batch_size=4)
    assert emb.shape == (14, 8) and emb.dtype == onp.float64
    expected = per_image(net, data_list[0]) + per_image(net, data_list[1])
    onp.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    # mxnet arrays, one context, a single view, batch larger than the set.
    one = ver.compute_embeddings(np.array(data_list[0]), net, mx.cpu(0), batch_size=512)
    onp.testing.assert_allclose(one, per_image(net, data_list[0]), rtol=1e-5, atol=1e-6)
    # test_face_11's XNorm is the mean norm of the views' average.
    issame = onp.zeros(7, bool)
    xnorm = ver.test_face_11((data_list, issame), net, CTX, batch_size=4)[0]
    assert xnorm == pytest.approx(onp.linalg.norm(expected / 2, axis=1).mean(), rel=1e-5)


@pytest.mark.parametrize('hybridize', [False, True])
def test_padding_does_not_leak(hybridize):
    # BatchNorm uses batch statistics in training mode: zero padding would shift every row.
    # compute_embeddings runs in predict mode, and the padded rows are dropped.
    net = tiny_net(batch_norm=True, hybridize=hybridize)
    data_list, _ = face_set(5)
    images = data_list[0]                    # 10 images, batches of 4: the last holds 2
    with autograd.train_mode():
        emb = ver.compute_embeddings([images], net, CTX, batch_size=4)
    onp.testing.assert_allclose(emb, per_image(tiny_net_clone(net), images), rtol=1e-5,
                                atol=1e-6)
    last = ver.compute_embeddings([images[8:]], net, CTX, batch_size=4)
    onp.testing.assert_allclose(last, emb[8:], rtol=1e-5, atol=1e-6)


def tiny_net_clone(net):
    """The same parameters in a non-hybridized copy on cpu(0), for per-image references."""
    clone = tiny_net(ctx=mx.cpu(0), batch_norm=True)
    for (_, src), (_, dst) in zip(sorted(net.collect_params().items()),
                                  sorted(clone.collect_params().items())):
        dst.set_data(src.data(mx.cpu(0)))
    return clone


# ----------------------------------------------------------------------------- reporting

def reports():
    rng = onp.random.RandomState(3)
    issame = onp.array([True, False] * 100)
    emb = rng.normal(size=(400, 16))
    emb[1::2][issame] = emb[0::2][issame] + 0.6 * rng.normal(size=(100, 16))
    return {'lfw': ver.evaluate_embeddings(emb, issame),
            'cfp_fp': ver.evaluate_embeddings(rng.normal(size=(400, 16)), issame)}


def test_plot_roc_writes_a_png(tmp_path):
    import matplotlib
    backend = matplotlib.get_backend()
    results = reports()
    path = tmp_path / 'plots' / 'roc.png'
    assert plot_roc(results, str(path), title="ROC") == str(path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert os.listdir(path.parent) == ['roc.png']  # no temporary file left
    plot_roc(results["lfw"], str(path))          # one result, overwritten in place
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert matplotlib.get_backend() == backend


def test_format_table():
    results = reports()
    lfw = results['lfw']
    table = ver.format_table(results)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith('| target |') and lines[1].startswith('|---|')
    assert 'TAR@FAR=0.001 (%)' in lines[0]
    assert lines[2].startswith('| lfw | %.2f ± %.2f |' % (100 * lfw.accuracy, 100 * lfw.std))
    assert '%.3f, %.3f' % (lfw.threshold, lfw.cos_threshold) in lines[2]
    text = ver.format_table(results, style='text').splitlines()
    assert len(text) == 4 and len({len(line) for line in text[:2]}) == 1
    assert text[3].startswith('cfp_fp')
    with pytest.raises(ValueError, match='style'):
        ver.format_table(results, style='html')


# ----------------------------------------------------------------------------- validation

def test_input_validation():
    emb = onp.random.normal(size=(40, 4))
    issame = onp.array([True, False] * 10)
    with pytest.raises(ValueError, match='even'):
        ver.evaluate_embeddings(emb[:39], issame)
    with pytest.raises(ValueError, match='even'):
        ver.evaluate_embeddings(emb[:, 0], issame)
    with pytest.raises(ValueError, match='40 embeddings but 19 pairs'):
        ver.evaluate_embeddings(emb, issame[:19])
    bad = emb.copy()
    bad[3, 1] = onp.nan
    with pytest.raises(ValueError, match='NaN'):
        ver.face_11(bad, issame)
    with pytest.raises(ValueError, match='boolean'):
        ver.evaluate_embeddings(emb, onp.arange(20))
    with pytest.raises(ValueError, match='num_folds'):
        ver.evaluate_embeddings(emb, issame, num_folds=21)
    with pytest.raises(ValueError, match='far_target'):
        ver.evaluate_embeddings(emb, issame, far_target=0)
    with pytest.raises(ValueError, match='expected 3 issame'):
        ver.best_threshold_accuracy([0.1, 0.2, 0.3], [True, False])


def test_network_input_validation():
    def net(x):
        raise AssertionError('the network must not run on invalid input')

    images = onp.zeros((6, 3, 4, 4), onp.float32)
    with pytest.raises(ValueError, match='6 images but 2 pairs'):
        ver.verify(([images, images], [True, False]), net, CTX)
    with pytest.raises(ValueError, match='data_list, issame_list'):
        ver.test_face_11([images], net, CTX)
    with pytest.raises(ValueError, match='same shape'):
        ver.compute_embeddings([images, images[:4]], net, CTX)
    with pytest.raises(ValueError, match=r'\(2N, C, H, W\)'):
        ver.compute_embeddings([images[0]], net, CTX)
    with pytest.raises(ValueError, match='batch_size'):
        ver.compute_embeddings([images], net, CTX, batch_size=0)


def test_verify_scores_fewer_pairs_than_folds_with_one_fold_each():
    data = onp.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 0], [-1, 0]], 'float32')
    data = data.reshape(8, 2, 1, 1)  # (2N, C, H, W) images whose embedding is themselves
    net = nn.Flatten()
    res = ver.verify(([np.array(data), np.array(data)], onp.array([True, False, True, False])),
                     net, mx.cpu(), batch_size=4)
    assert len(res.fold_accuracies) == 4 and res.accuracy == 1.0
