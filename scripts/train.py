#!/usr/bin/env python
"""Train ArcFace as in the d2l chapter "Training ArcFace" and verify the result.

Defaults are the chapter's: FaceResNet-18, 256-d embedding, SGD lr 0.1, wd 5e-4, batch 512,
5 epochs on faces-casia-ultrasmall, verified on lfw_small. Offline, use
``--dataset faces-synthetic --val-targets synthetic_val`` or your own data with ``--data-dir``.
"""
import argparse
import sys

from gluon_arcface import distributed, recipe

D = recipe.DEFAULTS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group('data')
    data.add_argument('--dataset', default=D['dataset'],
                      help='dataset hub name (faces-casia-ultrasmall, faces-casia-small, '
                           'faces-synthetic)')
    data.add_argument('--data-dir', help='your own dataset folder (property, train.rec/.idx or '
                                         '%%08d folders, <target>.bin); overrides --dataset')
    data.add_argument('--val-targets', default=','.join(D['val_targets']),
                      help='comma-separated verification sets (<name>.bin in the data folder)')
    data.add_argument('--num-workers', type=int, default=2, help='image decoding threads')
    data.add_argument('--skip-bad', action='store_true',
                      help='replace images that do not decode by the next good one and list them '
                           '(train.log, metrics.json) instead of stopping')
    model = p.add_argument_group('model')
    model.add_argument('--num-layers', type=int, default=D['num_layers'],
                       choices=[18, 34, 50, 100], help='FaceResNet depth')
    model.add_argument('--emb-size', type=int, default=D['emb_size'], help='embedding size')
    model.add_argument('--loss', default=D['loss'],
                       choices=['arcface', 'cosface', 'sphereface', 'softmax'],
                       help='margin preset: arcface (m=0.5), cosface (b=0.35), sphereface '
                            '(a=1.35) or a plain softmax head')
    model.add_argument('--margin-s', type=float, default=D['margin_s'], help='logit scale s')
    model.add_argument('--margin-m', type=float, help="additive angular margin m (loss's preset)")
    model.add_argument('--margin-a', type=float, help="multiplicative angular margin a")
    model.add_argument('--margin-b', type=float, help="additive cosine margin b")
    opt = p.add_argument_group('optimisation')
    opt.add_argument('--batch-size', type=int, default=D['batch_size'],
                     help='total batch size, split over the workers (--kvstore dist_*), then '
                          'over the devices')
    opt.add_argument('--lr', type=float, default=D['lr'], help='SGD learning rate')
    opt.add_argument('--wd', type=float, default=D['wd'], help='weight decay')
    opt.add_argument('--momentum', type=float, default=D['momentum'],
                     help='SGD momentum (the chapter uses none)')
    opt.add_argument('--epochs', type=int, default=D['epochs'], help='training epochs')
    opt.add_argument('--lr-steps', default='',
                     help='comma-separated epochs after which the LR is multiplied by 0.1, '
                          'e.g. "3,4"')
    opt.add_argument('--seed', type=int, help='random seed')
    run = p.add_argument_group('run')
    run.add_argument('--ctx', help='devices: cpu, cpu:0,cpu:1 or gpu:0,gpu:1 (default: all GPUs, '
                                   'else the CPU)')
    run.add_argument('--kvstore', default='device',
                     choices=distributed.LOCAL_KVSTORES + distributed.DIST_KVSTORES,
                     help='device or local on one machine; dist_sync, dist_device_sync or '
                          'dist_async across machines, started by scripts/launch.py')
    run.add_argument('--model-parallel', action='store_true',
                     help='split fc7 over the devices (--ctx) in class ranges, for many '
                          'identities; one machine')
    run.add_argument('--output', default='runs/train', help='run folder')
    run.add_argument('--verify-every', type=int, default=1, help='verify every k epochs')
    run.add_argument('--resume', action='store_true',
                     help='continue from the latest checkpoint in OUTPUT/checkpoints')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    try:
        args.lr_steps = [int(s) for s in args.lr_steps.split(',') if s.strip()]
    except ValueError:
        p.error('--lr-steps: expected comma-separated epoch numbers, got %r' % args.lr_steps)
    args.val_targets = [t for t in args.val_targets.split(',') if t.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    return recipe.main_guard(lambda: recipe.fit(
        args.output, dataset=args.dataset, data_dir=args.data_dir, val_targets=args.val_targets,
        num_layers=args.num_layers, emb_size=args.emb_size, batch_size=args.batch_size,
        lr=args.lr, wd=args.wd, momentum=args.momentum, epochs=args.epochs, loss=args.loss,
        margin_s=args.margin_s, margin_m=args.margin_m, margin_a=args.margin_a,
        margin_b=args.margin_b, lr_steps=args.lr_steps, ctx=args.ctx,
        verify_every=args.verify_every, resume=args.resume, num_workers=args.num_workers,
        seed=args.seed, kvstore=args.kvstore, model_parallel=args.model_parallel,
        skip_bad=args.skip_bad,
        progress=not args.no_progress) and 0)


if __name__ == '__main__':
    sys.exit(main())
