"""What changes during training, step by step: the learning rate, the margin ramp, and the
backbone's learning-rate multiplier while fine-tuning.

:class:`TrainSchedule` answers for a point of training given in epochs (``progress`` = epochs
done + the fraction of the current one), so that warm-ups and cosine decay move every step;
``train_ch_facerec`` calls :meth:`TrainSchedule.apply` before each step. With its defaults it is
the chapter's schedule: a constant learning rate, times ``lr_factor`` after each epoch listed in
``lr_steps``, and the full margin from the start.
"""
import math

__all__ = ['LR_SCHEDULES', 'TrainSchedule', 'backbone_params']

LR_SCHEDULES = ('step', 'cosine')


def backbone_params(net):
    """The backbone's parameters (``feat_net``) of a TrainBlock, FeatBlock or ModelParallelNet."""
    for block in (net, getattr(net, 'net', None)):
        feat_net = getattr(block, 'feat_net', None)
        if feat_net is not None:
            return list(feat_net.collect_params().values())
    return []


class TrainSchedule:
    """The learning rate, margin ramp and backbone LR multiplier at each point of training.

    * learning rate: ``base_lr``; during the first ``warmup_epochs`` it rises linearly from
      ``base_lr / (warmup steps)`` (per step) to ``base_lr``; then ``'step'``: times
      ``lr_factor`` for each epoch of ``lr_steps`` (0-based) already reached, or ``'cosine'``:
      half a cosine from ``base_lr`` down to 0 at the end of ``num_epochs``.
    * margin ramp (ArcMarginBlock's ``margin_ramp``, the fraction of the target margin): 0 for
      ``margin_hold`` epochs (a normalised-softmax start), then linear up to 1 over
      ``margin_warmup`` epochs.
    * backbone LR multiplier: 0 for ``freeze_epochs`` (the backbone stays as loaded while the new
      head learns), then ``backbone_lr_mult``.
    """

    def __init__(self, base_lr, num_epochs, lr_schedule='step', lr_steps=(), lr_factor=0.1,
                 warmup_epochs=0.0, margin_warmup=0.0, margin_hold=0.0, freeze_epochs=0.0,
                 backbone_lr_mult=1.0):
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError('unknown lr_schedule %r: expected one of %s'
                             % (lr_schedule, ', '.join(LR_SCHEDULES)))
        for name, value in (('warmup_epochs', warmup_epochs), ('margin_warmup', margin_warmup),
                            ('margin_hold', margin_hold), ('freeze_epochs', freeze_epochs),
                            ('backbone_lr_mult', backbone_lr_mult)):
            if value < 0:
                raise ValueError('%s must be >= 0, got %r' % (name, value))
        self.base_lr, self.num_epochs = float(base_lr), num_epochs
        self.lr_schedule, self.lr_steps = lr_schedule, tuple(lr_steps or ())
        self.lr_factor, self.warmup_epochs = lr_factor, float(warmup_epochs)
        self.margin_warmup, self.margin_hold = float(margin_warmup), float(margin_hold)
        self.freeze_epochs, self.backbone_lr_mult = float(freeze_epochs), float(backbone_lr_mult)
        self._applied = {}

    def lr(self, progress, steps_per_epoch=None):
        """Learning rate at ``progress`` epochs (float)."""
        if self.warmup_epochs and progress < self.warmup_epochs:
            # Linear from one step's worth (or a small fraction) to base_lr.
            first = 1.0 / (self.warmup_epochs * steps_per_epoch) if steps_per_epoch else 0.0
            return self.base_lr * max(first, progress / self.warmup_epochs)
        if self.lr_schedule == 'cosine':
            span = max(self.num_epochs - self.warmup_epochs, 1e-12)
            done = min(max(progress - self.warmup_epochs, 0.0) / span, 1.0)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * done))
        epoch = int(math.floor(progress + 1e-9))
        return self.base_lr * self.lr_factor ** sum(1 for s in self.lr_steps if epoch >= s)

    def margin_ramp(self, progress):
        """The fraction of the target margin at ``progress`` epochs, in [0, 1]."""
        if progress < self.margin_hold:
            return 0.0
        if not self.margin_warmup:
            return 1.0
        return min(1.0, (progress - self.margin_hold) / self.margin_warmup)

    def backbone_mult(self, progress):
        """The backbone parameters' learning-rate multiplier at ``progress`` epochs."""
        return 0.0 if progress < self.freeze_epochs else self.backbone_lr_mult

    @property
    def changes_lr(self):
        """Whether the learning rate of any parameter changes during training."""
        return bool(self.lr_steps or self.lr_schedule == 'cosine' or self.warmup_epochs
                    or self.freeze_epochs or self.backbone_lr_mult != 1.0)

    @property
    def moves_margin(self):
        return bool(self.margin_hold or self.margin_warmup)

    def apply(self, net, trainer, progress, steps_per_epoch=None):
        """Set the trainer's learning rate, the heads' margin ramp and the backbone's LR
        multiplier for the step at ``progress`` epochs. Returns the learning rate."""
        from ..nn.margin import set_head_state
        lr = self.lr(progress, steps_per_epoch)
        trainer.set_learning_rate(lr)
        if self.moves_margin:
            ramp = self.margin_ramp(progress)
            if self._applied.get('ramp') != ramp:
                set_head_state(net, 'margin_ramp', ramp)
                self._applied['ramp'] = ramp
        if self.freeze_epochs or self.backbone_lr_mult != 1.0:
            mult = self.backbone_mult(progress)
            if self._applied.get('mult') != mult:
                for param in backbone_params(net):
                    param.lr_mult = mult
                self._applied['mult'] = mult
        return lr
