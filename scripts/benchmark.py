#!/usr/bin/env python
"""Images/s of the FaceResNet training step, of verification inference and of the data loader.

Training: the plain blocks imperative and hybridized, and the package's default training path
(what train_ch_facerec does with a TrainBlock); inference: the plain imperative forward, the
hybridized blocks and the fast path (gluon_arcface.model.inference_net); the loader:
load_data_face_rec on a RecordIO set of JPEGs (generated unless --data-dir is given). When PyTorch
is installed, the same network is timed there too (NCHW and channels_last), in the same process
with the timing windows interleaved, so that load from other processes affects all alike.
Prints a markdown table with the medians over the rounds and the ratios.
"""
import argparse
import json
import shlex
import sys

from gluon_arcface import cli

# Case names and defaults; the measurement module is imported after --threads is applied.
TRAIN_CASES = ('mx_imperative', 'mx_hybridized', 'mx_default', 'torch_nchw',
               'torch_channels_last')
INFER_CASES = ('mx_imperative', 'mx_hybridized', 'mx_default', 'mx_fast', 'torch_channels_last')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--num-layers', type=int, default=18, choices=[18, 34, 50, 100],
                   help='FaceResNet depth')
    p.add_argument('--batch-size', type=int, default=32, help='training batch size')
    p.add_argument('--infer-batch-size', type=int, default=64, help='inference batch size')
    p.add_argument('--image-size', type=int, default=112,
                   help='square input side (a multiple of 16)')
    p.add_argument('--num-classes', type=int, default=300, help='identities of the ArcFace head')
    p.add_argument('--emb-size', type=int, default=256, help='embedding size')
    p.add_argument('--rounds', type=int, default=5, help='interleaved timing rounds (medians)')
    p.add_argument('--window', type=int, default=2, help='steps per case and round')
    p.add_argument('--train-cases', default=','.join(TRAIN_CASES),
                   help='comma-separated training cases ("" for none)')
    p.add_argument('--infer-cases', default=','.join(INFER_CASES),
                   help='comma-separated inference cases ("" for none)')
    p.add_argument('--no-loader', action='store_true', help='skip the data loader')
    p.add_argument('--loader-images', type=int, default=2048,
                   help='images of the generated RecordIO set')
    p.add_argument('--loader-workers', type=int, default=2, help='loader decoding threads')
    p.add_argument('--data-dir', help='time the loader on this dataset folder instead')
    cli.add_threads_argument(p)  # both frameworks: MXNet's OpenMP and torch.set_num_threads
    p.add_argument('--json', help='also write the raw measurements to this file')
    return p


def parse_args(argv=None):
    p = build_parser()
    args = cli.parse_args(lambda: p, argv)
    if args.image_size % 16:
        p.error('--image-size must be a multiple of 16 (four stride-2 stages)')
    for name in ('train_cases', 'infer_cases'):
        cases = [c for c in getattr(args, name).split(',') if c]
        known = TRAIN_CASES if name == 'train_cases' else INFER_CASES
        unknown = sorted(set(cases) - set(known))
        if unknown:
            p.error('unknown case(s) %s; choose from %s' % (', '.join(unknown), ', '.join(known)))
        setattr(args, name, tuple(cases))
    return args


def main(argv=None):
    args = parse_args(argv)  # applies --threads before MXNet loads
    from gluon_arcface import benchmark
    assert benchmark.TRAIN_CASES == TRAIN_CASES and benchmark.INFER_CASES == INFER_CASES
    result = benchmark.run_benchmark(
        num_layers=args.num_layers, batch_size=args.batch_size, image_size=args.image_size,
        num_classes=args.num_classes, emb_size=args.emb_size,
        infer_batch_size=args.infer_batch_size, rounds=args.rounds, window=args.window,
        train_cases=args.train_cases, infer_cases=args.infer_cases, loader=not args.no_loader,
        loader_images=args.loader_images, loader_workers=args.loader_workers,
        data_dir=args.data_dir, threads=args.threads,
        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    given = sys.argv[1:] if argv is None else argv
    result['command'] = ' '.join(['python scripts/benchmark.py'] + [shlex.quote(a) for a in given])
    print(benchmark.format_report(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
