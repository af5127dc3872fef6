"""Pictures people would rather look at than read: training curves, ROC and CMC curves, face
grids, photos with their faces named.

Figures are drawn with matplotlib's object API on an Agg canvas (pyplot's global backend is left
alone) and written atomically as PNG: training curves, ROC curves, grids of faces.
"""
import os

import numpy as np

from ..runtime.fileio import atomic_write

__all__ = ['plot_history', 'plot_face_grid', 'plot_roc', 'plot_cmc', 'draw_faces', 'save_figure']


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


def plot_cmc(results, path, title=None):
    """Save CMC curves (identification rate against rank) as a PNG; returns ``path``.
    ``results``: ``{name: evaluate_identification dict}`` (each with ``cmc``)."""
    fig = _figure((6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        cmc = r.get('cmc') or []
        if cmc:
            ax.plot(np.arange(1, len(cmc) + 1), cmc, 'o-', markersize=3,
                    label='%s: rank-1 %.1f %%' % (name, 100 * cmc[0]))
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('rank')
    ax.set_ylabel('identification rate (mated probes)')
    ax.set_ylim(0.0, 1.01)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower right', fontsize='small')
    ax.set_title(title or 'CMC (closed set)')
    return save_figure(fig, path)


def draw_faces(img, faces, path, quality=90):
    """Write an RGB photo with each face's box and label drawn on it as a JPEG, atomically.
    ``faces``: ``[(box (x0, y0, x1, y1), label, known)]``; known faces are drawn in green,
    the others in red."""
    import cv2
    out = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    scale = max(out.shape[:2]) / 1000.0
    thick = max(1, int(round(2 * scale)))
    for box, label, known in faces:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        color = (60, 200, 60) if known else (40, 40, 230)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thick)
        font = max(0.4, 0.7 * scale)
        (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        ty = min(out.shape[0] - 1, y1 + h + base + 4)
        cv2.rectangle(out, (x0, ty - h - base - 4), (x0 + w + 4, ty), color, -1)
        cv2.putText(out, label, (x0 + 2, ty - base - 2), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (255, 255, 255), thick, cv2.LINE_AA)
    ok, buf = cv2.imencode('.jpg', out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError('%s: could not encode the picture' % path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(buf.tobytes())
    return path
