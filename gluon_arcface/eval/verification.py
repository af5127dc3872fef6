"""Face verification: the chapter's ``test_face_11`` and InsightFace's 10-fold LFW protocol.

A verification set is ``(data_list, issame)``: ``data_list = [originals, flipped]``, each a
(2N, 3, H, W) float32 array in [0, 1] where images 2i and 2i+1 form pair i, and ``issame`` holds N
booleans. Both protocols score the L2-normalised sum of the embeddings of all the views.

* ``test_face_11`` (the chapter): cosine similarity, best accuracy over the thresholds
  arange(0, 1, 0.0025), chosen on the test pairs themselves (optimistic).
* ``evaluate_embeddings`` / ``verify`` (InsightFace, what papers report): squared Euclidean
  distance, 10 consecutive folds, each scored with the threshold best on the other nine; also TAR
  at FAR=1e-3 and the ROC averaged over the folds.
"""
import dataclasses

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import numpy as np

from ..nn.embed import compute_embeddings, image_views, l2_normalize, to_numpy

__all__ = ['FACE_11_THRESHOLDS', 'ROC_THRESHOLDS', 'VAL_THRESHOLDS', 'VerificationResult',
           'best_threshold_accuracy', 'compute_embeddings', 'evaluate_embeddings', 'face_11',
           'format_table', 'kfold_roc', 'kfold_splits', 'kfold_val', 'l2_normalize',
           'named_results', 'test_face_11',
           'threshold_at_far', 'verify', 'verify_pixels']

FACE_11_THRESHOLDS = np.arange(0, 1, 0.0025)  # cosine similarity (chapter)
ROC_THRESHOLDS = np.arange(0, 4, 0.01)        # squared distance (10-fold accuracy)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)       # squared distance (TAR at FAR)


@dataclasses.dataclass(eq=False)
class VerificationResult:
    """What ``evaluate_embeddings`` and ``verify`` return (rates are fractions in [0, 1]).

    10-fold protocol: ``accuracy`` and ``std`` (mean and population std of ``fold_accuracies``),
    ``threshold`` (mean of ``fold_thresholds``, a squared distance: same face when dist < it) and
    ``cos_threshold = 1 - threshold / 2`` (same face when cosine similarity > it); ``tar_at_far``,
    ``tar_std`` and ``far`` (mean FAR reached on the held-out folds) at ``far_target``; ``tpr``
    and ``fpr`` (T,), averaged over the folds, for each of ``thresholds`` (T,).
    Chapter protocol: ``xnorm``, ``best_threshold_accuracy`` and ``best_threshold`` (cosine).
    """

    accuracy: float
    std: float
    threshold: float
    cos_threshold: float
    tar_at_far: float
    tar_std: float
    far: float
    far_target: float
    xnorm: float
    best_threshold_accuracy: float
    best_threshold: float
    num_pairs: int
    fold_accuracies: np.ndarray = dataclasses.field(repr=False)
    fold_thresholds: np.ndarray = dataclasses.field(repr=False)
    tpr: np.ndarray = dataclasses.field(repr=False)
    fpr: np.ndarray = dataclasses.field(repr=False)
    thresholds: np.ndarray = dataclasses.field(repr=False)

    def as_dict(self):
        """The scalar fields, JSON-ready (what scripts/verify.py's verification.json holds)."""
        return {f.name: (float(v) if isinstance(v, (float, np.floating)) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]
                if not isinstance(v, np.ndarray)}

    def summary(self):
        """One line for logs."""
        return (f'acc {100 * self.accuracy:.2f}±{100 * self.std:.2f}% '
                f'({len(self.fold_accuracies)} folds), '
                f'TAR@FAR={self.far_target:g} {100 * self.tar_at_far:.2f}%, '
                f'best-thr acc {100 * self.best_threshold_accuracy:.2f}%, '
                f'XNorm {self.xnorm:.3f}, '
                f'threshold {self.threshold:.3f} (cos {self.cos_threshold:.3f})')


# ----------------------------------------------------------------------------- numpy core

def _check_issame(issame, num_pairs=None):
    issame = np.asarray(issame)
    if issame.ndim != 1:
        raise ValueError(f'issame must be 1-D, got shape {issame.shape}')
    if issame.dtype != bool:
        if issame.size and not np.isin(issame, (0, 1)).all():
            raise ValueError('issame must hold booleans (or 0/1)')
        issame = issame.astype(bool)
    if num_pairs is not None and len(issame) != num_pairs:
        raise ValueError(f'expected {num_pairs} issame values, got {len(issame)}')
    return issame


def _check_embeddings(embeddings, issame):
    """(2N, D) float64 embeddings and (N,) bool issame, or ValueError."""
    emb = np.asarray(to_numpy(embeddings), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[0] % 2:
        raise ValueError('embeddings must be (2N, D) with an even, positive count 2N '
                         f'(pair i = rows 2i, 2i+1), got shape {emb.shape}')
    if not np.isfinite(emb).all():
        raise ValueError('embeddings contain NaN or inf (did training diverge?)')
    issame = _check_issame(issame)
    if emb.shape[0] != 2 * len(issame):
        raise ValueError(f'{emb.shape[0]} embeddings but {len(issame)} pairs: need '
                         f'2 * len(issame) = {2 * len(issame)} rows')
    return emb, issame


def _confusion(dist, issame, thresholds):
    """Counts (tp, fp, tn, fn), each (T,) int, of the prediction "same" = ``dist < t``."""
    pos = np.sort(dist[issame])
    neg = np.sort(dist[~issame])
    tp = np.searchsorted(pos, thresholds, side='left')  # how many are < t
    fp = np.searchsorted(neg, thresholds, side='left')
    return tp, fp, len(neg) - fp, len(pos) - tp


def _rate(num, den):
    """num / den, and 0 where den == 0 (InsightFace's convention for TPR and FPR)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def best_threshold_accuracy(sim, issame, thresholds=None):
    """The chapter's search: ``(accuracy, threshold)`` of "same" = ``sim > t``.

    ``sim`` (N,) cosine similarities, ``issame`` (N,) bool, ``thresholds`` defaults to
    arange(0, 1, 0.0025). The first best threshold is kept; (0.0, 0.0) if no threshold gets a
    single pair right (the chapter's starting values).
    """
    sim = np.asarray(sim, dtype=np.float64).ravel()
    issame = _check_issame(issame, len(sim))
    thresholds = FACE_11_THRESHOLDS if thresholds is None else np.asarray(thresholds, float)
    # sim > t  <=>  -sim < -t (negation is exact): reuse the distance counts.
    tp, _, tn, _ = _confusion(-sim, issame, -thresholds)
    correct = tp + tn
    best = int(np.argmax(correct))
    if correct[best] == 0:
        return 0.0, 0.0
    return float(correct[best]) / len(sim), float(thresholds[best])


def face_11(embeddings, issame):
    """The chapter's protocol on embeddings: ``(xnorm, accuracy, threshold)``.

    ``embeddings`` (2N, D): the chapter averages the views (sum / number of views) first, which
    changes only ``xnorm``, the mean L2 norm of these rows. They are L2-normalised, pair i
    (rows 2i, 2i+1) is scored by cosine similarity, and ``best_threshold_accuracy`` picks the
    threshold on these same pairs.
    """
    emb, issame = _check_embeddings(embeddings, issame)
    normed, norms = l2_normalize(emb), np.sqrt(np.sum(emb * emb, axis=1))
    sim = np.sum(normed[0::2] * normed[1::2], 1)
    acc, thresh = best_threshold_accuracy(sim, issame)
    return float(np.mean(norms)), acc, thresh


def kfold_splits(n, num_folds=10):
    """``[(train, test), ...]`` index arrays of ``num_folds`` consecutive folds of ``range(n)``.

    As sklearn's ``KFold(num_folds, shuffle=False)``: the first ``n % num_folds`` folds hold
    one more item.
    """
    if not 2 <= num_folds <= n:
        raise ValueError(f'need 2 <= num_folds <= number of pairs, got {num_folds!r} folds '
                         f'for {n} pairs')
    sizes = np.full(num_folds, n // num_folds)
    sizes[:n % num_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.arange(n)
    folds = [idx[bounds[f]:bounds[f + 1]] for f in range(num_folds)]
    return [(np.setdiff1d(idx, test), test) for test in folds]


def kfold_roc(dist, issame, num_folds=10, thresholds=None):
    """10-fold accuracy of "same" = ``dist < t``: ``(tpr, fpr, fold_accuracies, fold_thresholds)``.

    For each fold, the threshold (first best on ties) that maximises the accuracy of the other
    folds scores the held-out fold. ``tpr``, ``fpr`` (T,): held-out rates at every threshold,
    averaged over the folds. ``thresholds`` defaults to arange(0, 4, 0.01).
    """
    dist = np.asarray(dist, dtype=np.float64)
    issame = _check_issame(issame, len(dist))
    thresholds = ROC_THRESHOLDS if thresholds is None else np.asarray(thresholds, float)
    splits = kfold_splits(len(dist), num_folds)
    tprs = np.zeros((num_folds, len(thresholds)))
    fprs = np.zeros_like(tprs)
    accs, thrs = np.zeros(num_folds), np.zeros(num_folds)
    for f, (train, test) in enumerate(splits):
        tp, _, tn, _ = _confusion(dist[train], issame[train], thresholds)
        best = int(np.argmax(tp + tn))
        tp, fp, tn, fn = _confusion(dist[test], issame[test], thresholds)
        tprs[f], fprs[f] = _rate(tp, tp + fn), _rate(fp, fp + tn)
        accs[f] = (tp[best] + tn[best]) / len(test)
        thrs[f] = thresholds[best]
    return tprs.mean(0), fprs.mean(0), accs, thrs


def threshold_at_far(far, thresholds, far_target):
    """The threshold at which the FAR curve reaches ``far_target``, linearly interpolated.

    ``far`` (T,) is non-decreasing along ``thresholds`` (T,) and has long flat runs. InsightFace
    calls ``scipy.interpolate.interp1d(far, thresholds, kind='slinear')``, which SciPy >= 1.9
    rejects for repeated x ("Expect x to not have duplicates"); older SciPy joined the last
    threshold of each flat run to the first of the next one. This does the same.
    """
    far, thresholds = np.asarray(far, dtype=float), np.asarray(thresholds, dtype=float)
    if not far[0] <= far_target <= far[-1]:
        raise ValueError(f'far_target {far_target:g} is outside the FAR range '
                         f'[{far[0]:g}, {far[-1]:g}]')
    j = int(np.searchsorted(far, far_target, side='right')) - 1  # last index with far <= target
    if j == len(far) - 1:  # the maximum FAR: the first threshold reaching it
        return float(thresholds[np.searchsorted(far, far_target, side='left')])
    k = j + 1
    return float(thresholds[j] + (far_target - far[j]) * (thresholds[k] - thresholds[j])
                 / (far[k] - far[j]))


def kfold_val(dist, issame, far_target=1e-3, num_folds=10, thresholds=None):
    """Validation rate (TAR) at a false accept rate: ``(tar_mean, tar_std, far_mean)``.

    For each fold: the threshold at which the other folds reach ``far_target``
    (``threshold_at_far``; 0 if they never do) gives the held-out TAR and FAR. A fold without
    same (different) pairs counts TAR (FAR) 0. ``thresholds`` defaults to arange(0, 4, 0.001).
    """
    if not 0 < far_target <= 1:
        raise ValueError(f'far_target must be in (0, 1], got {far_target!r}')
    dist = np.asarray(dist, dtype=np.float64)
    issame = _check_issame(issame, len(dist))
    thresholds = VAL_THRESHOLDS if thresholds is None else np.asarray(thresholds, float)
    tar, far = np.zeros(num_folds), np.zeros(num_folds)
    for f, (train, test) in enumerate(kfold_splits(len(dist), num_folds)):
        _, fp, tn, _ = _confusion(dist[train], issame[train], thresholds)
        far_train = _rate(fp, fp + tn)
        if far_train.max() >= far_target:
            threshold = threshold_at_far(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        tp, fp, tn, fn = _confusion(dist[test], issame[test], np.array([threshold]))
        tar[f], far[f] = _rate(tp, tp + fn)[0], _rate(fp, fp + tn)[0]
    return float(tar.mean()), float(tar.std()), float(far.mean())


def evaluate_embeddings(embeddings, issame, num_folds=10, far_target=1e-3):
    """Both protocols on (2N, D) embeddings (pair i = rows 2i, 2i+1): a ``VerificationResult``.

    Pass the views' average (sum / number of views) to get the chapter's XNorm; the rest does
    not depend on the scale. Rows are L2-normalised; the 10-fold protocol scores squared
    distances, the chapter's (``best_threshold_*``) cosine similarities.
    """
    emb, issame = _check_embeddings(embeddings, issame)
    normed, norms = l2_normalize(emb), np.sqrt(np.sum(emb * emb, axis=1))
    e1, e2 = normed[0::2], normed[1::2]
    dist = np.sum(np.square(e1 - e2), 1)
    tpr, fpr, accs, thrs = kfold_roc(dist, issame, num_folds)
    tar, tar_std, far = kfold_val(dist, issame, far_target, num_folds)
    best_acc, best_thr = best_threshold_accuracy(np.sum(e1 * e2, 1), issame)
    threshold = float(np.mean(thrs))
    return VerificationResult(
        accuracy=float(np.mean(accs)), std=float(np.std(accs)), threshold=threshold,
        cos_threshold=1.0 - threshold / 2, tar_at_far=tar, tar_std=tar_std, far=far,
        far_target=far_target, xnorm=float(np.mean(norms)), best_threshold_accuracy=best_acc,
        best_threshold=best_thr, num_pairs=len(issame), fold_accuracies=accs,
        fold_thresholds=thrs, tpr=tpr, fpr=fpr, thresholds=ROC_THRESHOLDS.copy())


# ----------------------------------------------------------------------------- network level

def _unpack(data_set):
    try:
        data_list, issame = data_set
    except (TypeError, ValueError):
        raise ValueError('data_set must be (data_list, issame_list)') from None
    data_list = image_views(data_list)
    issame = _check_issame(issame)
    if data_list[0].shape[0] != 2 * len(issame):
        raise ValueError(f'{data_list[0].shape[0]} images but {len(issame)} pairs: need '
                         f'2 * len(issame) = {2 * len(issame)} images')
    return data_list, issame


def test_face_11(data_set, net, ctx=None, batch_size=512):
    """The chapter's verification test: ``(xnorm, accuracy, threshold)``.

    ``data_set = (data_list, issame)``; the embeddings of all views are averaged, then ``face_11``
    scores them. ``threshold`` is a cosine similarity chosen on the test pairs themselves.
    """
    data_list, issame = _unpack(data_set)
    emb = compute_embeddings(data_list, net, ctx, batch_size) / len(data_list)
    return face_11(emb, issame)


test_face_11.__test__ = False  # not a pytest test


def verify_pixels(data_set, num_folds=10, far_target=1e-3):
    """The raw-pixel baseline a face model must beat: ``verify`` with the flattened pixels of
    all views, summed, as the embeddings (cosine similarity of the images and their mirrors).
    """
    data_list, issame = _unpack(data_set)
    emb = sum(to_numpy(view).reshape(view.shape[0], -1).astype(np.float64) for view in data_list)
    return evaluate_embeddings(emb / len(data_list), issame,
                               max(2, min(num_folds, len(issame))), far_target)


def verify(data_set, net, ctx=None, batch_size=512, num_folds=10, far_target=1e-3,
           progress=False, dtype=None):
    """Run ``net`` once over ``data_set = (data_list, issame)`` and score both protocols.

    Returns ``evaluate_embeddings``' ``VerificationResult``; ``(result.xnorm,
    result.best_threshold_accuracy, result.best_threshold)`` is ``test_face_11``'s triple.
    A set with fewer pairs than ``num_folds`` (at least 2) is scored with one fold per pair.
    """
    data_list, issame = _unpack(data_set)
    emb = compute_embeddings(data_list, net, ctx, batch_size, progress=progress,
                             dtype=dtype) / len(data_list)
    return evaluate_embeddings(emb, issame, max(2, min(num_folds, len(issame))), far_target)


# ----------------------------------------------------------------------------- reporting

def named_results(results):
    if isinstance(results, VerificationResult):
        return {'model': results}
    results = dict(results)
    if not results:
        raise ValueError('no results given')
    return results


def format_table(results, style='markdown'):
    """A verification table, one row per target: ``style`` 'markdown' or 'text'.

    Columns: target, 10-fold accuracy ± std, the chapter's best-threshold accuracy, TAR at the
    target FAR ± std, XNorm, and the 10-fold threshold (squared distance and cosine).
    """
    if style not in ('markdown', 'text'):
        raise ValueError(f"style must be 'markdown' or 'text', got {style!r}")
    results = named_results(results)
    targets = {r.far_target for r in results.values()}
    tar_head = f'TAR@FAR={targets.pop():g} (%)' if len(targets) == 1 else 'TAR@FAR (%)'
    head = ['target', '10-fold acc (%)', 'best-thr acc (%)', tar_head, 'XNorm',
            'threshold (dist², cos)']
    rows = [[str(name), f'{100 * r.accuracy:.2f} ± {100 * r.std:.2f}',
             f'{100 * r.best_threshold_accuracy:.2f}',
             f'{100 * r.tar_at_far:.2f} ± {100 * r.tar_std:.2f}', f'{r.xnorm:.3f}',
             f'{r.threshold:.3f}, {r.cos_threshold:.3f}'] for name, r in results.items()]
    if style == 'markdown':
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' + '---:|' * (len(head) - 1)]
        lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    else:
        widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]

        def line(row):  # first column left-aligned, numbers right-aligned
            return '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        lines = [line(head), '  '.join('-' * w for w in widths)] + [line(row) for row in rows]
    return '\n'.join(lines) + '\n'
