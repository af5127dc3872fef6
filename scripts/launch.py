#!/usr/bin/env python
"""Run a command as a distributed MXNet job: a scheduler, servers and workers.

A front end to MXNet's own launcher (mxnet/tools/launch.py and dmlc_tracker) that works on
Python >= 3.9 and stops the whole job, with a non-zero exit status, when one process fails.

  python scripts/launch.py -n 2 -s 1 --launcher local -- \\
      python scripts/train.py --kvstore dist_sync --data-dir DATA ...
  python scripts/launch.py -n 4 -s 2 --launcher ssh -H hosts -- \\
      python scripts/train.py --kvstore dist_sync --data-dir DATA ...
"""
import argparse
import sys

from gluon_arcface import cli


def build_parser():
    from gluon_arcface import launcher
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-n', '--num-workers', type=int, required=True, help='number of workers')
    p.add_argument('-s', '--num-servers', type=int,
                   help='number of servers (default: as many as workers)')
    p.add_argument('--launcher', default='local', choices=launcher.LAUNCHERS,
                   help='local: every process on this machine; ssh/mpi: on the machines of -H')
    p.add_argument('-H', '--hostfile', help='machines, one host[:ssh port] per line (ssh, mpi)')
    p.add_argument('--sync-dst-dir', help='ssh: rsync the current folder to this folder on '
                                          'every machine first, and run there')
    p.add_argument('--host-ip', help='address of this machine, where the scheduler listens, as '
                                     'the others reach it (default: 127.0.0.1 for local, '
                                     "the launcher's guess otherwise)")
    p.add_argument('--env', action='append', default=[],
                   help='NAME or NAME:value to pass to every process (ssh); repeatable')
    p.add_argument('--env-server', action='append', default=[],
                   help='NAME:value for the servers only; repeatable')
    p.add_argument('--env-worker', action='append', default=[],
                   help='NAME:value for the workers only; repeatable')
    p.add_argument('--timeout', type=float, help='stop the job after this many seconds')
    p.add_argument('--threads', type=int, metavar='N',
                   help='CPU compute threads of each process started (OMP_NUM_THREADS; default: '
                        'local: the physical cores shared among the workers; elsewhere each '
                        'process applies the thread policy on its machine)')
    p.add_argument('command', nargs=argparse.REMAINDER,
                   help='the command every process runs, after --')
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.command[:1] == ['--']:
        args.command = args.command[1:]
    if not args.command:
        p.error('no command given: ... -- python scripts/train.py --kvstore dist_sync ...')
    return args


def main(argv=None):
    args = parse_args(argv)
    from gluon_arcface import launcher
    return cli.main_guard(lambda: launcher.launch(
        args.command, args.num_workers, args.num_servers, launcher=args.launcher,
        hostfile=args.hostfile, sync_dst_dir=args.sync_dst_dir, env=args.env, threads=args.threads,
        env_server=args.env_server, env_worker=args.env_worker, host_ip=args.host_ip,
        timeout=args.timeout))


if __name__ == '__main__':
    sys.exit(main())
