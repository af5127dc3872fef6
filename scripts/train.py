#!/usr/bin/env python
"""Train ArcFace as in the d2l chapter "Training ArcFace" and verify the result.

Defaults are the chapter's: FaceResNet-18, 256-d embedding, SGD lr 0.1, wd 5e-4, batch 512,
5 epochs on faces-casia-ultrasmall, verified on lfw_small. Offline, use
--dataset faces-synthetic --val-targets synthetic_val, or your own data with --data-dir.
--recipe names a set of values for the settings not given (docs/own_photos.md, docs/pretrained.md).
"""
import sys

from gluon_arcface import cli, config


def main(argv=None):
    args = cli.parse_args(lambda: config.build_parser(__doc__), argv)

    def run():
        from gluon_arcface import recipe
        recipe.fit(config.config_from_args(args))
    return cli.main_guard(run)


if __name__ == '__main__':
    sys.exit(main())
