"""Pictures people would rather look at than read: training curves, ROC curves, face grids.

Figures are drawn with matplotlib's object API on an Agg canvas (pyplot's global backend is left
alone) and written atomically as PNG: training curves, ROC curves, grids of faces.
"""
import os

import numpy as np

from ..runtime.fileio import atomic_write

__all__ = ['plot_history', 'plot_face_grid', 'plot_roc', 'save_figure']


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi=100):
    """Write a matplotlib Figure to ``path`` (PNG), atomically; creates the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format='png', dpi=dpi, bbox_inches='tight')
    return path


def plot_history(history, path, title=None):
    """Training curves from ``train_ch_facerec``'s history: loss, and accuracies per epoch."""
    epochs = history['epochs']
    x = [e['epoch'] for e in epochs]
    fig = _figure((9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(x, [e['loss'] for e in epochs], 'o-', label='train loss')
    ax1.set_xlabel('epoch')
    ax1.set_ylabel('softmax cross-entropy')
    ax1.grid(alpha=0.3)
    ax2.plot(x, [e['train_acc'] for e in epochs], 'o-', label='train accuracy')
    targets = sorted({t for e in epochs for t in (e.get('verification') or {})})
    for target in targets:
        pts = [(e['epoch'], e['verification'][target]) for e in epochs
               if target in (e.get('verification') or {})]
        ax2.plot(*zip(*pts), 's--', label='%s (10-fold)' % target)
    ax2.set_xlabel('epoch')
    ax2.set_ylabel('accuracy')
    ax2.set_ylim(0, 1.02)
    ax2.grid(alpha=0.3)
    ax2.legend(loc='lower right')
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_face_grid(images, path, labels=None, ncols=8, title=None):
    """A grid of RGB uint8 (H, W, 3) images, optionally captioned with ``labels``."""
    images = [np.asarray(img.asnumpy() if hasattr(img, 'asnumpy') else img) for img in images]
    nrows = max(1, -(-len(images) // ncols))
    fig = _figure((1.3 * ncols, 1.45 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis('off')
        if i < len(images):
            ax.imshow(images[i])
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_roc(results, path, title=None):
    """Save the ROC curve (TPR against FPR, log scale) of each result as a PNG; returns ``path``.

    ``results``: ``{name: result}`` (or one result); a result has ``fpr``, ``tpr``,
    ``accuracy``, ``std``, ``far_target`` and ``tar_at_far`` (a ``VerificationResult``). Each
    curve marks its TAR at the target FAR; the legend gives the 10-fold accuracy.
    """
    if hasattr(results, 'fpr'):
        results = {'model': results}
    results = dict(results)
    if not results:
        raise ValueError('no results given')
    positive = [r.fpr[r.fpr > 0] for r in results.values()]
    smallest = min([r.far_target / 10 for r in results.values()]
                   + [p.min() for p in positive if p.size])
    floor = 10.0 ** np.floor(np.log10(smallest))  # FPR 0 is drawn at the left edge

    fig = _figure((6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        label = f'{name}: acc {100 * r.accuracy:.2f} ± {100 * r.std:.2f} %'
        (line,) = ax.plot(np.maximum(r.fpr, floor), r.tpr, label=label)
        ax.plot([r.far_target], [r.tar_at_far], 'o', color=line.get_color())
    for target in sorted({r.far_target for r in results.values()}):
        ax.axvline(target, color='gray', linestyle=':', linewidth=1)
    ax.set_xscale('log')
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel('false positive rate')
    ax.set_ylabel('true positive rate')
    far_target = next(iter(results.values())).far_target
    ax.set_title(title or f'ROC (10-fold; dots: TAR at FAR={far_target:g})')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(loc='lower right', fontsize='small')
    return save_figure(fig, path)
