"""How many threads MXNet computes with: one per physical core this process may use.

MXNet 1.9.1 sizes its OpenMP pool once, when it loads: from ``MXNET_OMP_MAX_THREADS`` or
``OMP_NUM_THREADS`` when set, otherwise half of the processors it sees on x86 (it assumes two
hyper-threads per core). On a machine whose processors are separate cores (most cloud VMs and
containers) that leaves half of them idle. So ``import gluon_arcface`` sets ``OMP_NUM_THREADS``
(before MXNet loads) to the physical cores available to the process: the CPUs of its affinity
mask, hyper-thread siblings counted once (from the CPU topology in sysfs), capped by a cgroup CPU
quota. A value the user set in ``OMP_NUM_THREADS`` or ``MXNET_OMP_MAX_THREADS`` wins.

On CPUs with AMX, :func:`enable_amx` (also run by ``import gluon_arcface``) lets oneDNN use
it for bfloat16 (``--amp``): MXNet 1.9.1's oneDNN leaves AMX off unless ``DNNL_MAX_CPU_ISA``
allows it.

This module does not import MXNet: scripts call :func:`configure_threads` with their
``--threads`` before anything loads MXNet. Everything else in the package loads MXNet lazily.
"""
import ctypes
import math
import os
import platform
import sys
import warnings

__all__ = ['THREAD_ENV', 'THREADS_HELP', 'THREADS_DEFAULT', 'allowed_cpus', 'cpu_topology',
           'cgroup_cpu_limit', 'physical_cores', 'user_threads', 'choose_threads',
           'configure_threads', 'decoding_workers', 'cpu_info', 'enable_amx', 'disable_amx',
           'onednn_uses_amx', 'describe_cpu', 'thread_info']

THREAD_ENV = ('MXNET_OMP_MAX_THREADS', 'OMP_NUM_THREADS')  # MXNet reads them in this order
THREADS_HELP = 'CPU compute threads'
THREADS_DEFAULT = ('MXNET_OMP_MAX_THREADS or OMP_NUM_THREADS if set, else the physical cores '
                   'available')
SYS_CPU = '/sys/devices/system/cpu'
CGROUP_ROOT = '/sys/fs/cgroup'

# The value this module put into OMP_NUM_THREADS (and why), and whether it has warned.
_state = {'set_by_us': None, 'source': None, 'warned': False}


def allowed_cpus():
    """The CPU numbers this process may run on (its affinity mask), as a sorted list."""
    if hasattr(os, 'sched_getaffinity'):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_topology(cpus, sys_cpu=SYS_CPU):
    """``{cpu: (package id, core id)}`` from sysfs for each of ``cpus``; a CPU whose topology
    cannot be read counts as a core of its own."""
    out = {}
    for cpu in cpus:
        folder = os.path.join(sys_cpu, 'cpu%d' % cpu, 'topology')
        try:
            with open(os.path.join(folder, 'physical_package_id')) as f:
                package = int(f.read().strip())
            with open(os.path.join(folder, 'core_id')) as f:
                core = int(f.read().strip())
        except (OSError, ValueError):
            package, core = -1, -1 - cpu  # unknown: its own core
        out[cpu] = (package, core)
    return out


def _read_first_line(path):
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup):
    """``{controller: path}`` from /proc/self/cgroup (``''`` is the cgroup v2 hierarchy)."""
    out = {}
    try:
        with open(proc_cgroup) as f:
            for line in f:
                parts = line.rstrip('\n').split(':', 2)
                if len(parts) == 3:
                    for controller in parts[1].split(','):
                        out[controller] = parts[2]
    except OSError:
        pass
    return out


def _ancestors(root, path):
    """``root/path``, its parent folders up to ``root``, and ``root`` itself (in a container
    the process's own cgroup is often mounted at the root)."""
    parts = [p for p in path.split('/') if p]
    seen = []
    for i in range(len(parts), -1, -1):
        seen.append(os.path.join(root, *parts[:i]))
    return seen


def cgroup_cpu_limit(root=CGROUP_ROOT, proc_cgroup='/proc/self/cgroup'):
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None when unlimited.

    cgroup v2: ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``); cgroup v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: unlimited). The smallest quota on the
    way from the process's cgroup to the root applies.
    """
    paths = _cgroup_paths(proc_cgroup)
    limits = []
    for folder in _ancestors(root, paths.get('', '/')):
        text = _read_first_line(os.path.join(folder, 'cpu.max'))
        if text:
            quota, _, period = text.partition(' ')
            if quota != 'max':
                try:
                    limits.append(int(quota) / int(period or 100000))
                except (ValueError, ZeroDivisionError):
                    pass
    for mount in ('cpu', 'cpu,cpuacct', 'cpuacct,cpu'):
        for folder in _ancestors(os.path.join(root, mount), paths.get('cpu', '/')):
            quota = _read_first_line(os.path.join(folder, 'cpu.cfs_quota_us'))
            period = _read_first_line(os.path.join(folder, 'cpu.cfs_period_us'))
            try:
                if quota is not None and int(quota) > 0 and period and int(period) > 0:
                    limits.append(int(quota) / int(period))
            except ValueError:
                pass
    return min(limits) if limits else None


def physical_cores(cpus=None, topology=None, quota=None):
    """Physical cores available: ``cpus`` (default: the affinity mask) with hyper-thread siblings
    (same package and core id in ``topology``) counted once, at most ``floor(quota)`` (a cgroup
    CPU quota in CPUs; a whole core that is only partly granted would stall OpenMP's barriers),
    at least 1."""
    cpus = allowed_cpus() if cpus is None else list(cpus)
    topology = cpu_topology(cpus) if topology is None else topology
    cores = len({topology.get(cpu, (-1, -1 - cpu)) for cpu in cpus}) or 1
    if quota is not None:
        cores = min(cores, max(1, int(math.floor(quota + 1e-9))))
    return max(1, cores)


def user_threads(environ=None):
    """``(count, variable)`` when the user set ``MXNET_OMP_MAX_THREADS`` / ``OMP_NUM_THREADS``
    (not this module), else None."""
    environ = os.environ if environ is None else environ
    for name in THREAD_ENV:
        value = environ.get(name)
        if value and not (name == 'OMP_NUM_THREADS' and value == _state['set_by_us']):
            try:
                return max(1, int(value.split(',')[0])), name
            except ValueError:
                pass  # OpenMP ignores a value it cannot read; so does this
    return None


def choose_threads(threads=None, environ=None, cores=None):
    """``(number of compute threads, where it comes from)``.

    ``threads`` (e.g. a script's ``--threads``) wins; then ``MXNET_OMP_MAX_THREADS`` /
    ``OMP_NUM_THREADS`` when the user set them; then the physical cores (``cores``, default
    :func:`physical_cores` with the cgroup quota).
    """
    environ = os.environ if environ is None else environ
    if threads is not None:
        threads = int(threads)
        if threads < 1:
            raise ValueError('threads must be at least 1, got %d' % threads)
        return threads, 'requested'
    user = user_threads(environ)
    if user is not None:
        return user
    if cores is None:
        cores = physical_cores(quota=cgroup_cpu_limit())
    return cores, 'physical cores'


def _mxnet_loaded():
    return 'mxnet' in sys.modules


def configure_threads(threads=None, environ=None):
    """Apply the policy: put the chosen count into ``OMP_NUM_THREADS`` before MXNet loads.

    Called by ``import gluon_arcface`` (``threads=None``: the user's environment or the physical
    cores) and by the scripts with ``--threads``. Once MXNet is loaded its pool is fixed: then
    nothing changes, and a one-line warning says how many threads MXNet uses and how to change
    it (once per process). Returns the number of threads MXNet computes with (as far as known).
    """
    environ = os.environ if environ is None else environ
    count, source = choose_threads(threads, environ)
    if _mxnet_loaded():
        current, current_source = _mxnet_threads(environ)
        if current != count and not _state['warned']:
            _state['warned'] = True
            warnings.warn(
                'MXNet was loaded before gluon_arcface set its threads: it computes with %d '
                'thread(s) (%s), not %d (%s). Set OMP_NUM_THREADS=%d before starting Python, or '
                'import gluon_arcface before mxnet.' % (current, current_source, count, source,
                                                         count), RuntimeWarning, stacklevel=3)
        return current
    if source in ('requested', 'physical cores'):
        environ['OMP_NUM_THREADS'] = _state['set_by_us'] = str(count)
        _state['source'] = source
        if 'MXNET_OMP_MAX_THREADS' in environ:  # MXNet would read it first
            environ['MXNET_OMP_MAX_THREADS'] = str(count)
    return count


def _mxnet_threads(environ):
    """What MXNet 1.9.1 chose when it loaded: its environment variables, else half of the
    processors on x86 (all of them elsewhere)."""
    for name in THREAD_ENV:
        value = environ.get(name)
        if value:
            if name == 'OMP_NUM_THREADS' and value == _state['set_by_us']:
                return int(value), _state['source']
            try:
                return max(1, int(value.split(',')[0])), name
            except ValueError:
                pass
    procs = len(allowed_cpus())
    if platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686', 'x86'):
        return max(1, procs // 2), "MXNet's default: half of the %d processors" % procs
    return procs, "MXNet's default: the %d processors" % procs


def decoding_workers(compute_threads=None, on_gpu=False, cores=None):
    """Image-decoding threads for the training loader, sized with the compute threads.

    Decoding a 112x112 JPEG (and augmenting it) is more than 100x faster than a training step on
    a CPU core, so CPU training needs one decoding thread per 8 cores (at least one): more would
    only take cores from the compute threads. With GPUs the cores are free for decoding: all but
    one of them (at most 8).
    """
    cores = physical_cores(quota=cgroup_cpu_limit()) if cores is None else cores
    if on_gpu:
        return max(1, min(8, cores - 1))
    return max(1, -(-cores // 8))


def cpu_info(cpuinfo='/proc/cpuinfo'):
    """``{'model': ..., 'avx512_bf16': bool, 'amx': bool}`` of this machine's CPU (Linux;
    ``platform.processor()`` and False elsewhere)."""
    model, flags = None, set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(':')
                key = key.strip()
                if key == 'model name' and model is None:
                    model = value.strip()
                elif key in ('flags', 'Features') and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    if model is None:
        model = platform.processor() or platform.machine()
    return {'model': model, 'avx512_bf16': 'avx512_bf16' in flags,
            'amx': bool({'amx_bf16', 'amx_tile'} & flags)}


ISA_ENV = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA')  # oneDNN's names for its highest ISA
AMX_ENV = 'GLUON_ARCFACE_AMX'  # '0' keeps oneDNN's default (no AMX)
# Holds the DNNL_MAX_CPU_ISA value this package set, so that it (and a child process: a
# distributed worker, a script run from a notebook) can tell its own setting from the user's.
_AMX_MARK = '_GLUON_ARCFACE_SET_ISA'
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18  # x86-64 Linux


def _request_amx_permission():
    """Ask Linux (>= 5.16) for the AMX register state; True when granted."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def enable_amx(environ=None, info=None, request=_request_amx_permission):
    """Let oneDNN run bfloat16 on AMX, on CPUs that have it: ``DNNL_MAX_CPU_ISA`` set to
    ``AVX512_CORE_AMX`` (MXNet 1.9.1's oneDNN stops at AVX512-BF16 otherwise; float32 is not
    affected). The process first asks Linux for AMX's register state, which a process must do
    before its first AMX instruction: without it the first AMX kernel kills the process. So the
    ISA is only allowed once the permission is granted. A max ISA the user set, or
    ``GLUON_ARCFACE_AMX=0``, wins. Must run before MXNet's first bfloat16 operation.

    Returns ``(enabled, why)``. A child process inherits the variable but not the permission:
    one that uses MXNet in bfloat16 must ``import gluon_arcface`` (or call this) first, which
    decides again when the inherited value is the package's own (not the user's).
    """
    environ = os.environ if environ is None else environ
    info = cpu_info() if info is None else info
    if environ.get(AMX_ENV, '').strip() == '0':
        return False, '%s=0' % AMX_ENV
    ours = environ.get(_AMX_MARK)
    if ours and environ.get('DNNL_MAX_CPU_ISA') == ours and not environ.get(ISA_ENV[0]):
        del environ['DNNL_MAX_CPU_ISA'], environ[_AMX_MARK]  # a parent's, decided again here
    for name in ISA_ENV:
        if environ.get(name):  # the user's choice, or inherited from a parent process
            on = onednn_uses_amx(environ)
            if on and info.get('amx') and not request():
                return False, ('%s=%s, but Linux refused the AMX permission: AMX kernels will '
                               'fail' % (name, environ[name]))
            return on, '%s=%s' % (name, environ[name])
    if not info.get('amx'):
        return False, 'no AMX on this CPU'
    if not (sys.platform.startswith('linux') and platform.machine().lower() in
            ('x86_64', 'amd64')):
        return False, 'AMX needs x86-64 Linux'
    if not request():
        return False, 'Linux refused the AMX permission (kernel older than 5.16?)'
    environ['DNNL_MAX_CPU_ISA'] = environ[_AMX_MARK] = 'AVX512_CORE_AMX'
    return True, 'oneDNN may use AMX'


def disable_amx(environ=None):
    """Undo :func:`enable_amx` before oneDNN's first primitive, which reads the variable once
    (a user's own setting stays); :func:`recipe.fit` calls it for ``amp`` runs.

    For bfloat16 training: oneDNN 2.4's AMX kernels made the training step slower than its
    AVX512-BF16 ones (docs/performance.md), while they make inference several times faster.
    Returns whether the variable was removed.
    """
    environ = os.environ if environ is None else environ
    ours = environ.get(_AMX_MARK)
    if ours and environ.get('DNNL_MAX_CPU_ISA') == ours:
        del environ['DNNL_MAX_CPU_ISA'], environ[_AMX_MARK]
        return True
    return False


def thread_info(num_workers=None):
    """What a run logs: compute threads and their source, decoding workers, cores, CPU."""
    count, source = _mxnet_threads(os.environ) if _mxnet_loaded() else choose_threads()
    quota = cgroup_cpu_limit()
    info = dict(compute_threads=count, threads_from=source, decoding_workers=num_workers,
                physical_cores=physical_cores(quota=quota), allowed_cpus=len(allowed_cpus()),
                cgroup_cpu_quota=quota)
    info.update(('cpu_' + k if k == 'model' else k, v) for k, v in cpu_info().items())
    info['onednn_amx'] = onednn_uses_amx()
    return info


def onednn_uses_amx(environ=None):
    """Whether oneDNN's highest ISA lets it use AMX (the first of ``ISA_ENV`` that is set, as
    oneDNN reads them)."""
    environ = os.environ if environ is None else environ
    value = next((environ[name] for name in ISA_ENV if environ.get(name)), '')
    return 'AMX' in value.upper()


def describe_cpu(model, avx512_bf16, amx, amx_used):
    """One line for logs: the CPU model and its bfloat16 features."""
    return '%s (AVX512-BF16 %s, AMX %s)' % (model, 'yes' if avx512_bf16 else 'no',
                                            ('yes, used' if amx_used else 'yes, unused')
                                            if amx else 'no')
