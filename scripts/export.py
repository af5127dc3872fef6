#!/usr/bin/env python
"""Export a trained face model for deployment: ONNX (onnxruntime, the insightface package) and
MXNet symbol + params.

--model takes a run folder of scripts/train.py, an exported model (PREFIX or
PREFIX-symbol.json) or an InsightFace IR-ResNet MXNet checkpoint (PREFIX,EPOCH). The ONNX model
takes RGB float32 (N, 3, H, W) with pixel values 0-255 and returns the (not normalised)
embedding; see docs/deploying.md.

An InsightFace checkpoint's pixel normalisation is read from its graph (subtract / multiply
after data, through identity and Cast nodes; a bn_data BatchNorm with equal statistics in every
channel; nothing recognised: RGB 0-255, InsightFace's convention); --input-range 1 says its graph
takes RGB in [0, 1] instead. A bn_data normalised per channel cannot be mapped (verify.py still
runs such a checkpoint).
"""
import argparse
import sys

from gluon_arcface import cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True,
                   help='run folder, exported model prefix, InsightFace PREFIX,EPOCH or a '
                        'pretrained model (dlib-resnet-v1)')
    p.add_argument('--onnx', metavar='FILE', help='write an ONNX model here')
    p.add_argument('--mxnet', metavar='PREFIX',
                   help='write PREFIX-symbol.json + PREFIX-0000.params (and model.json beside)')
    p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                   help='compute dtype of the MXNet export (default: float32)')
    p.add_argument('--input-range', type=int, choices=(1, 255),
                   help='pixel range an InsightFace checkpoint\'s graph takes: 255 (RGB 0-255) '
                        'or 1 (RGB in [0, 1]); default: read from the graph, else 255. This '
                        'package\'s own models always take [0, 1] (255 is an error for them); '
                        'the exported ONNX model takes 0-255 either way')
    p.add_argument('--check', action='store_true',
                   help='after the ONNX export, compare onnxruntime with MXNet on random faces '
                        'and print the largest difference')
    cli.add_threads_argument(p)
    return p


def main(argv=None):
    args = cli.parse_args(build_parser, argv)
    if not (args.onnx or args.mxnet):
        build_parser().error('nothing to do: give --onnx FILE and/or --mxnet PREFIX')

    def run():
        import os
        import gluon_arcface as gaf
        from gluon_arcface import interop
        cli.get_logger()  # shows the pixel range chosen for an InsightFace model, and why
        net, image_size = gaf.faceresnet_from_model(args.model, input_range=args.input_range)
        if args.onnx:
            gaf.export_onnx(net, args.onnx, image_size)
            print('wrote %s (input: RGB 0-255, %dx%d)' % ((args.onnx,) + tuple(image_size)))
            if args.check:
                print('largest |onnxruntime - MXNet| on the embeddings: %.3g (largest '
                      'embedding value %.3g)' % gaf.compare_onnx(net, args.onnx, image_size))
        if args.mxnet:
            interop.export_embedding_net(net, args.mxnet, image_size, dtype=args.dtype)
            interop.write_model_info(
                os.path.dirname(os.path.abspath(args.mxnet)), image_size, net.emb_size,
                getattr(net, 'num_layers', None), input_norm=getattr(net, 'input_norm', None),
                backbone=net.describe() if hasattr(net, 'describe') else None)
            print('wrote %s-symbol.json and %s-0000.params' % (args.mxnet, args.mxnet))
    return cli.main_guard(run)


if __name__ == '__main__':
    sys.exit(main())
