"""The model-parallel margin head of the sibling chapter "Model Parallelism of Training ArcFace".

With many identities fc7 (num_classes x emb_size) outgrows one device. Here the backbone stays
data parallel (a copy per device, each on its share of the batch) while fc7 is split over the
devices in contiguous class ranges, one head block per device (``cls_nets``, in class order):

1. each device computes the embeddings of its share of the batch (standardised per share, as the
   TrainBlock does); they are gathered on ``ctx[0]``;
2. every head block gets all the embeddings and computes its partial logits (B, n_i); the margin
   falls on the target logit only in the block that holds the target class;
3. the softmax cross-entropy is computed across the blocks from per-sample reductions (global
   max, sum of exponentials, target logit; (B,) vectors), and so is its gradient
   ``softmax - one_hot`` on each block;
4. the embedding gradients of the blocks are summed and sent back through the backbone.

Loss and gradients equal those of the single ArcMarginBlock on the same batch. Checkpoints are
written in the TrainBlock's layout (``feat_net.*`` and one ``margin_block.fc7_weight``), so a
TrainBlock loads them and a model-parallel run resumes from a TrainBlock's.
"""
import functools
import os
import pickle
import tempfile

from ..runtime import _mxnet  # noqa: F401  (NumPy semantics, first)
import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, npx
from mxnet import np as mnp
from mxnet.gluon import nn

from ..models.checkpoint import check_states_file
from ..nn.margin import HEAD_STATE, ArcMarginBlock, SoftmaxBlock, adacos_scale, set_head_state
from ..nn.model import STANDARDIZE_EPS, get_faceresnet
from ..runtime.devices import as_contexts
from .training import make_test_net, train_ch_facerec

__all__ = ['FeatBlock', 'class_ranges', 'split_head', 'ModelParallelNet',
           'ModelParallelTrainer', 'train_ch_facerec_parall', 'gather_head', 'scatter_head',
           'HEAD_PREFIX']

HEAD_PREFIX = 'margin_block.'  # where a TrainBlock's checkpoint keeps the head's parameters


class FeatBlock(nn.HybridBlock):
    """The sibling chapter's backbone: FaceResNet embeddings, standardised when ``is_train``.

    ``forward(x)``: (N, 3, H, W) float32 -> (N, emb_size) float32; with ``is_train`` each
    dimension is standardised over the batch (eps 2e-5), as in the TrainBlock. Parameter names
    match the TrainBlock's ``feat_net`` and the TestBlock's, so ``make_test_net(net)`` and
    checkpoints work unchanged. ``fast`` as in TrainBlock.
    """

    def __init__(self, num_layers, emb_size, use_dropout, is_train=True, fast=True,
                 input_norm=None, **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.emb_size, self.use_dropout = num_layers, emb_size, use_dropout
        self.input_norm = input_norm
        self.is_train, self.fast = is_train, fast
        with self.name_scope():
            self.feat_net = nn.HybridSequential(prefix='')
            self.feat_net.add(get_faceresnet(num_layers, emb_size, use_dropout, do_init=is_train,
                                             fast=fast, input_norm=input_norm))

    def hybrid_forward(self, F, x):
        feat = self.feat_net(x)
        if not self.is_train:
            return feat
        mean = F.np.mean(feat, axis=0)
        std = F.np.sqrt(F.np.var(feat, axis=0) + STANDARDIZE_EPS)
        return (feat - mean) / std


def class_ranges(num_classes, num_shards):
    """Contiguous ``[(start, end), ...]`` covering ``range(num_classes)``, sizes within one."""
    if not 0 < num_shards <= num_classes:
        raise ValueError('cannot split %d classes over %d devices: expected 1 to %d devices'
                         % (num_classes, num_shards, num_classes))
    size, extra = divmod(num_classes, num_shards)
    bounds = [0]
    for i in range(num_shards):
        bounds.append(bounds[-1] + size + (i < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def split_head(emb_size, num_classes, ctx, margin=None, softmax=False):
    """One head block per context over ``class_ranges(num_classes, len(ctx))``.

    ArcMarginBlock(emb_size, n_i, **margin) (a preset from ``margin.margin_settings`` or
    ``MARGIN_PRESETS``), or SoftmaxBlock when ``softmax``; block i's parameters live on ctx[i]
    only.
    """
    ctx = as_contexts(ctx)
    blocks = []
    for (start, end), c in zip(class_ranges(num_classes, len(ctx)), ctx):
        block = SoftmaxBlock(emb_size, end - start) if softmax else \
            ArcMarginBlock(emb_size, end - start, **(margin or {}))
        block.collect_params().reset_ctx(c)
        blocks.append(block)
    return blocks


def _structural(block):
    return block._collect_params_with_prefix()  # the names save_parameters uses


def gather_head(cls_nets):
    """The blocks' parameters joined in class order on the CPU, under the TrainBlock's names:
    ``{'margin_block.fc7_weight': (num_classes, emb_size), ...}``; the state parameters
    (``margin_scale``, ``margin_ramp``: the same in every block) are taken from the first."""
    names = sorted(_structural(cls_nets[0]))
    out = {}
    for name in names:
        parts = [_structural(c)[name].data().as_in_ctx(mx.cpu()) for c in cls_nets]
        out[HEAD_PREFIX + name] = parts[0] if name in HEAD_STATE else mnp.concatenate(parts, axis=0)
    return out


def scatter_head(arrays, cls_nets):
    """Set the blocks' parameters from a TrainBlock-layout dict (as ``gather_head`` returns).
    State parameters missing from ``arrays`` (checkpoints older than them) keep their values."""
    total = sum(c.num_classes for c in cls_nets)
    start = 0
    for c in cls_nets:
        for name, param in _structural(c).items():
            key = HEAD_PREFIX + name
            if name in HEAD_STATE:
                if key in arrays:
                    param.set_data(arrays[key])
                continue
            if key not in arrays:
                raise ValueError('%s missing: expected the head parameters of a TrainBlock '
                                 'checkpoint' % key)
            if arrays[key].shape[0] != total:
                raise ValueError('%s has %d classes, the head blocks %d in total'
                                 % (key, arrays[key].shape[0], total))
            param.set_data(arrays[key][start:start + c.num_classes])
        start += c.num_classes


class ModelParallelNet(gluon.Block):
    """A backbone ``net`` (data parallel over the devices) and fc7 split into ``cls_nets``.

    ``net(x) -> embeddings`` (e.g. FeatBlock); ``cls_nets[i]`` (ArcMarginBlock or SoftmaxBlock
    of ``num_classes`` n_i) holds classes [sum of n_j for j < i, ... + n_i) on one context.
    ``save_parameters`` / ``load_parameters`` use the TrainBlock's layout.
    """

    def __init__(self, net, cls_nets, **kwargs):
        super().__init__(**kwargs)
        if not cls_nets:
            raise ValueError('cls_nets: expected one head block per device, got none')
        self.net, self.cls_nets, self.offsets, self.head_ctx = net, list(cls_nets), [], []
        offset = 0
        for i, block in enumerate(self.cls_nets):
            contexts = {c for p in block.collect_params().values() for c in p.list_ctx()}
            if len(contexts) != 1:
                raise ValueError('cls_nets[%d] has parameters on %s: expected one context '
                                 '(cls_net.collect_params().reset_ctx(ctx[%d]))'
                                 % (i, sorted(map(str, contexts)), i))
            self.register_child(block, 'cls_net%d' % i)
            self.head_ctx.append(contexts.pop())
            self.offsets.append(offset)
            offset += block.num_classes
        self.num_classes = offset

    def forward_backward(self, X, y, ctx, loss_scale=1.0):
        """Forward and backward over a batch; gradients are left in the parameters.

        X (B, 3, H, W) and y (B,) class ids, split over ``ctx`` for the backbone. Returns
        ``(loss, pred)`` on ctx[0]: the softmax cross-entropy of each sample (B,) float32 and
        the predicted class (B,) int64.
        """
        ctx = as_contexts(ctx, self.net)
        hub = ctx[0]
        xs = gluon.utils.split_and_load(X, ctx, batch_axis=0, even_split=False)
        with autograd.record():
            embs = [self.net(x) for x in xs]
        emb = mnp.concatenate([e.as_in_ctx(hub) for e in embs], axis=0)
        y = y.as_in_ctx(hub).astype('int32')
        inputs, logits, targets = [], [], []
        for block, offset, c in zip(self.cls_nets, self.offsets, self.head_ctx):
            x = emb.copyto(c)  # each block's own leaf, for its embedding gradient
            x.attach_grad()
            local_y = y.as_in_ctx(c) - offset  # outside [0, n_i): the target is elsewhere
            with autograd.record():
                logits.append(block(x, local_y))
            inputs.append(x)
            targets.append(npx.one_hot(local_y, block.num_classes))

        def on_hub(arrays):
            return mnp.stack([a.as_in_ctx(hub) for a in arrays])

        maxes = on_hub([z.max(axis=1) for z in logits])  # (blocks, B)
        top = maxes.max(axis=0)
        exps = [mnp.exp(z - top.as_in_ctx(z.ctx)[:, None]) for z in logits]
        sum_exp = on_hub([e.sum(axis=1) for e in exps]).sum(axis=0)
        target_logit = on_hub([(z * t).sum(axis=1) for z, t in zip(logits, targets)]).sum(axis=0)
        loss = mnp.log(sum_exp) + top - target_logit
        autograd.backward(logits, [(e / sum_exp.as_in_ctx(e.ctx)[:, None] - t) * loss_scale
                                   for e, t in zip(exps, targets)])
        if getattr(self.cls_nets[0], 'adaptive_scale', False):
            off_target = on_hub([(e * (1 - t)).sum(axis=1) for e, t in zip(exps, targets)])
            self._update_scale(off_target.sum(axis=0), top, target_logit)
        emb_grad = sum(x.grad.as_in_ctx(hub) for x in inputs)
        start, emb_grads = 0, []
        for e in embs:
            emb_grads.append(emb_grad[start:start + e.shape[0]].as_in_ctx(e.ctx))
            start += e.shape[0]
        autograd.backward(embs, emb_grads)
        # The first block holding the largest logit, as argmax over the whole row would pick.
        best = maxes.argmax(axis=0)
        local_best = on_hub([z.argmax(axis=1).astype('int64') + offset
                             for z, offset in zip(logits, self.offsets)])
        pred = npx.pick(local_best, best, axis=0)
        return loss, pred

    def _update_scale(self, off_target, top, target_logit):
        """Dynamic AdaCos across the blocks, as ArcMarginBlock.update_scale on one head:
        ``off_target`` (B,) sums exp(logit - top) over the non-target classes of all blocks."""
        head = self.cls_nets[0]
        scale, ramp = head.state('margin_scale'), head.state('margin_ramp')
        top, off_target = top.asnumpy().astype('float64'), off_target.asnumpy().astype('float64')
        target = target_logit.asnumpy().astype('float64')
        others = np.exp(top) * off_target
        new = adacos_scale(others, head.target_angle(target, scale, ramp))
        for block in self.cls_nets:
            set_head_state(block, 'margin_scale', new)

    def batch_step(self, X, y, ctx, loss_scale=None):
        """``train_ch_facerec``'s batch step: ``(summed loss, correct predictions)``;
        ``loss_scale``: float16's LossScale (gradients of the loss times its scale)."""
        loss, pred = self.forward_backward(X, y, ctx, loss_scale.scale if loss_scale else 1.0)
        correct = (pred == y.as_in_ctx(pred.ctx).astype('int64')).sum()
        return float(loss.sum()), int(correct)

    def save_parameters(self, filename, deduplicate=False):
        """Save as a TrainBlock would: the backbone's names plus ``margin_block.fc7_weight``."""
        arrays = {name: p._reduce() for name, p in _structural(self.net).items()}
        arrays.update(gather_head(self.cls_nets))
        npx.save(filename, arrays)

    def load_parameters(self, filename, ctx=None, allow_missing=False, ignore_extra=False,
                        cast_dtype=False, dtype_source='current'):
        """Load a TrainBlock-layout file (from this class or a TrainBlock); extra keys ignored."""
        arrays = npx.load(filename)
        params = _structural(self.net)
        missing = sorted(set(params) - set(arrays))
        if missing:
            raise ValueError('%s lacks %d backbone parameters (%s, ...): not a checkpoint of '
                             'this network' % (filename, len(missing), missing[0]))
        for name, param in params.items():
            param._load_init(arrays[name], ctx)  # also completes a deferred initialisation
        scatter_head(arrays, self.cls_nets)


class ModelParallelTrainer:
    """The trainers of a ModelParallelNet behind one Trainer-like object.

    One gluon.Trainer for the backbone (gradients summed over its devices by ``kvstore``) and
    one per head block (on its device only); ``step``, ``learning_rate``,
    ``set_learning_rate``, ``save_states`` and ``load_states`` act on all of them.
    """

    def __init__(self, model, optimizer='sgd', optimizer_params=None, kvstore='device',
                 update_on_kvstore=None):
        params = dict(optimizer_params or {})
        self.trainers = [gluon.Trainer(model.net.collect_params(), optimizer, dict(params),
                                       kvstore=kvstore, update_on_kvstore=update_on_kvstore)]
        self.trainers += [gluon.Trainer(c.collect_params(), optimizer, dict(params), kvstore=None)
                          for c in model.cls_nets]

    @property
    def learning_rate(self):
        return self.trainers[0].learning_rate

    def set_learning_rate(self, lr):
        for t in self.trainers:
            t.set_learning_rate(lr)

    def step(self, batch_size, ignore_stale_grad=False):
        for t in self.trainers:
            t.step(batch_size, ignore_stale_grad)

    @property
    def _params(self):
        return [p for t in self.trainers for p in t._params]

    def allreduce_grads(self):
        """Sum the gradients over the devices (float16 loss scaling checks them before
        ``update``)."""
        for t in self.trainers:
            t.allreduce_grads()

    def update(self, batch_size, ignore_stale_grad=False):
        for t in self.trainers:
            t.update(batch_size, ignore_stale_grad)

    def save_states(self, fname):
        """All trainers' states in one file (a pickled list of gluon.Trainer state files)."""
        blobs = []
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'states')
            for t in self.trainers:
                t.save_states(path)
                with open(path, 'rb') as f:
                    blobs.append(f.read())
        with open(fname, 'wb') as f:
            pickle.dump(blobs, f)

    def load_states(self, fname):
        check_states_file(fname)  # a list of bytes, nothing else
        with open(fname, 'rb') as f:
            blobs = pickle.load(f)
        if not isinstance(blobs, list) or len(blobs) != len(self.trainers) \
                or not all(isinstance(b, bytes) for b in blobs):
            raise ValueError('%s: expected the states of %d trainers (backbone + %d head blocks), '
                             'saved by a model-parallel run with as many devices'
                             % (fname, len(self.trainers), len(self.trainers) - 1))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'states')
            for t, blob in zip(self.trainers, blobs):
                with open(path, 'wb') as f:
                    f.write(blob)
                check_states_file(path)  # only what Trainer.save_states writes
                t.load_states(path)


def train_ch_facerec_parall(net, cls_nets, loader, num_epochs, ctx, lr=0.1, wd=5e-4,
                            momentum=0.9, trainer=None, test_net=None, hybridize=True,
                            optimizer='sgd', amp=False, **kwargs):
    """Train ``net`` (embeddings, data parallel over ``ctx``) with fc7 split into ``cls_nets``.

    The sibling chapter's call ``train_ch_facerec_parall(net, cls_nets, loader, num_epochs,
    ctx)`` works as is: SGD (lr 0.1, momentum 0.9, wd 5e-4; ``optimizer`` names another MXNet
    optimizer, e.g. 'nag') unless ``trainer`` (e.g. a ModelParallelTrainer) is given. Other
    keyword arguments are train_ch_facerec's (val_set, lr_steps or schedule, checkpoint_dir,
    resume, ...); verification uses ``test_net`` or, for a FeatBlock, ``make_test_net(net)``.
    Returns train_ch_facerec's history.
    """
    ctx = as_contexts(ctx, net)
    model = ModelParallelNet(net, cls_nets)
    if hybridize:
        for block in [net] + model.cls_nets:
            block.hybridize(static_alloc=True, static_shape=True)
    if trainer is None:
        params = {'learning_rate': lr, 'wd': wd}
        if momentum:
            params['momentum'] = momentum
        # float16 loss scaling sums the gradients and updates in two steps (amp on GPUs).
        trainer = ModelParallelTrainer(model, optimizer, params,
                                       update_on_kvstore=False if amp else None)
    if kwargs.get('val_set') and test_net is None:
        test_net = make_test_net(net)
    return train_ch_facerec(model, loader, None, trainer, num_epochs, ctx, test_net=test_net,
                            hybridize=hybridize, amp=amp,
                            batch_step=functools.partial(model.batch_step, ctx=ctx), **kwargs)
