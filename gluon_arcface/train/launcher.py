"""Starting a distributed job: MXNet's own launcher, made to work and to stop cleanly.

:func:`launch` runs a command as a distributed job with MXNet's launcher
(``mxnet/tools/launch.py`` and ``dmlc_tracker``, shipped in the wheel): a scheduler, servers and
workers, on this machine or on others over ssh/mpi. It works on Python >= 3.9, stops every
process when one of them fails, returns that process's status, and shares this machine's cores
among local workers. Inside each worker, :mod:`gluon_arcface.train.distributed` takes over.
"""
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from ..runtime.errors import ConfigError, DistributedError
from ..runtime.threads import cgroup_cpu_limit, physical_cores, user_threads

__all__ = ['LAUNCHERS', 'launcher_script', 'launch']

LAUNCHERS = ('local', 'ssh', 'mpi', 'sge', 'yarn')


def launcher_script():
    """Path of MXNet's launcher, ``mxnet/tools/launch.py`` (shipped in the mxnet 1.x wheels)."""
    spec = importlib.util.find_spec('mxnet')
    path = os.path.join(os.path.dirname(spec.origin), 'tools', 'launch.py')
    if not os.path.isfile(path) or importlib.util.find_spec('dmlc_tracker') is None:
        raise DistributedError('%s or the dmlc_tracker package is missing: this MXNet build does '
                               'not ship its launcher (the mxnet 1.9.1 wheel does)' % path)
    return path


def _command_line(command, launcher):
    if launcher == 'local':
        return shlex.join(command)
    # ssh/mpi wrap the command in single quotes on a remote shell: no quoting can pass through.
    bad = [arg for arg in command if shlex.quote(arg) != arg]
    if bad:
        raise ConfigError('the %s launcher passes the command through a remote shell unquoted; '
                          'these arguments need quoting: %s' % (launcher, ' '.join(bad)))
    return ' '.join(command)


def _group_alive(pgid):
    """True while a process of group ``pgid`` runs (zombies do not count, /proc permitting)."""
    if not os.path.isdir('/proc'):
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for pid in os.listdir('/proc'):
        try:
            with open('/proc/%s/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if fields[0] != 'Z' and int(fields[2]) == pgid:
            return True
    return False


def _stop_group(pgid, grace):
    """Wait up to ``grace`` s for group ``pgid`` to end, then SIGTERM it, then SIGKILL it."""
    for sig, wait in ((None, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
        deadline = time.time() + wait
        while _group_alive(pgid):
            if time.time() > deadline:
                break
            time.sleep(0.1)
        else:
            return


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def launch(command, num_workers, num_servers=None, launcher='local', hostfile=None,
           sync_dst_dir=None, env=(), env_server=(), env_worker=(), host_ip=None, timeout=None,
           grace=30.0, threads=None):
    """Run ``command`` (a list of arguments) as a distributed job; return its exit status.

    MXNet's launcher starts a scheduler, ``num_servers`` servers (default: ``num_workers``) and
    ``num_workers`` workers, all running ``command`` with their DMLC_* environment, on this
    machine (``launcher='local'``) or on the machines of ``hostfile`` ('ssh', 'mpi'; 'sge',
    'yarn' as MXNet supports them). ``env`` / ``env_server`` / ``env_worker`` are launch.py's
    ``--env`` options (``NAME:value``). ``host_ip``: the scheduler's address (default 127.0.0.1
    for 'local', the launcher's guess otherwise). ``threads``: the compute threads of each
    process (``OMP_NUM_THREADS``); by default the local launcher shares this machine's physical
    cores among the workers (unless the user set OMP_NUM_THREADS), and with other launchers each
    process applies the thread policy on its own machine.

    The job's processes form one process group, stopped (SIGTERM, then SIGKILL) when any of them
    exits non-zero (whose status is returned), when ``timeout`` seconds pass (status 124), on
    SIGINT/SIGTERM, or ``grace`` seconds after a successful end. Processes the ssh launcher
    started on other machines are not in the group: see mxnet/tools/kill-mxnet.py.
    """
    command = list(command)
    if not command:
        raise ConfigError('launch: no command given; expected e.g. python scripts/train.py '
                          '--kvstore dist_sync ...')
    if launcher not in LAUNCHERS:
        raise ConfigError('unknown launcher %r: expected one of %s'
                          % (launcher, ', '.join(LAUNCHERS)))
    if launcher in ('ssh', 'mpi') and not hostfile:
        raise ConfigError('the %s launcher needs a host file (one host[:port] per line)' % launcher)
    if num_workers < 1 or (num_servers is not None and num_servers < 1):
        raise ConfigError('expected at least one worker and one server, got %s workers, %s servers'
                          % (num_workers, num_servers))
    args = ['-n', str(num_workers), '-s', str(num_servers or num_workers), '--launcher', launcher]
    child_env = dict(os.environ)
    if threads is None and launcher == 'local' and user_threads() is None:
        threads = max(1, physical_cores(quota=cgroup_cpu_limit()) // num_workers)
    if threads is not None:
        child_env['OMP_NUM_THREADS'] = str(threads)
        env = list(env) + ['OMP_NUM_THREADS:%d' % threads]
    elif user_threads() is None:  # this process's policy value: each process chooses its own
        child_env.pop('OMP_NUM_THREADS', None)
    if hostfile:
        args += ['-H', hostfile]
    if sync_dst_dir:
        args += ['--sync-dst-dir', sync_dst_dir]
    for option, values in (('--env', env), ('--env-server', env_server),
                           ('--env-worker', env_worker)):
        for value in values:
            args += [option, value]
    args.append(_command_line(command, launcher))
    if host_ip is None and launcher == 'local':
        host_ip = '127.0.0.1'
    # The boot file runs by its path: importing the package there would apply the thread
    # policy to the launcher's environment, which the local workers inherit.
    boot = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_launch_boot.py')
    proc = subprocess.Popen([sys.executable, boot, launcher_script(), host_ip or ''] + args,
                            start_new_session=True, env=child_env)
    previous = None  # SIGTERM ends this process through the finally below, not at once
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_exit)
    status = None
    try:
        status = proc.wait(timeout=timeout)
        return status
    except subprocess.TimeoutExpired:
        print('launch: still running after %g s; stopping the job' % timeout, file=sys.stderr,
              flush=True)
        status = 124
        return status
    finally:
        _stop_group(proc.pid, grace if status == 0 else 0.0)
        proc.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
