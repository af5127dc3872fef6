"""The thread policy: how many compute threads for a given affinity, topology and quota; the
user's OMP_NUM_THREADS wins; a warning when MXNet was loaded first; decoding threads."""
import os
import subprocess
import sys

import pytest

from gluon_arcface import threads


def topology(cores, per_core):
    """CPU numbering as Linux gives it: cpu i is core i % cores, hyper-thread i // cores."""
    return {cpu: (0, cpu % cores) for cpu in range(cores * per_core)}


def test_hyperthread_siblings_count_once():
    assert threads.physical_cores(range(8), topology(4, 2)) == 4
    assert threads.physical_cores(range(4), topology(4, 1)) == 4  # one thread per core (VMs)
    # The affinity mask holds only both threads of core 0 and one of core 1.
    assert threads.physical_cores([0, 4, 1], topology(4, 2)) == 2
    # Two sockets with the same core ids are different cores.
    two_sockets = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}
    assert threads.physical_cores(range(4), two_sockets) == 4


def test_cgroup_quota_caps_the_cores():
    assert threads.physical_cores(range(8), topology(8, 1), quota=2.0) == 2
    assert threads.physical_cores(range(8), topology(8, 1), quota=2.5) == 2  # whole cores only
    assert threads.physical_cores(range(8), topology(8, 1), quota=0.5) == 1  # at least one
    assert threads.physical_cores(range(2), topology(2, 1), quota=16.0) == 2


def test_unknown_topology_counts_each_cpu(tmp_path):
    # No sysfs: every CPU is taken as a core of its own.
    topo = threads.cpu_topology([0, 1, 2], sys_cpu=str(tmp_path))
    assert len(set(topo.values())) == 3


def test_cpu_topology_read_from_sysfs(tmp_path):
    for cpu, (package, core) in topology(2, 2).items():
        folder = tmp_path / ('cpu%d' % cpu) / 'topology'
        folder.mkdir(parents=True)
        (folder / 'physical_package_id').write_text('%d\n' % package)
        (folder / 'core_id').write_text('%d\n' % core)
    topo = threads.cpu_topology(range(4), sys_cpu=str(tmp_path))
    assert threads.physical_cores(range(4), topo) == 2


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path):
    proc = tmp_path / 'cgroup'
    write(proc, '0::/job/step\n')
    write(tmp_path / 'fs' / 'job' / 'step' / 'cpu.max', 'max 100000\n')
    write(tmp_path / 'fs' / 'job' / 'cpu.max', '150000 100000\n')  # a parent limits
    assert threads.cgroup_cpu_limit(str(tmp_path / 'fs'), str(proc)) == pytest.approx(1.5)
    write(tmp_path / 'fs' / 'job' / 'cpu.max', 'max 100000\n')
    assert threads.cgroup_cpu_limit(str(tmp_path / 'fs'), str(proc)) is None


def test_cgroup_v1_quota(tmp_path):
    proc = tmp_path / 'cgroup'
    write(proc, '4:memory:/x\n2:cpu,cpuacct:/docker/abc\n')
    cpu = tmp_path / 'fs' / 'cpu,cpuacct' / 'docker' / 'abc'
    write(cpu / 'cpu.cfs_quota_us', '300000\n')
    write(cpu / 'cpu.cfs_period_us', '100000\n')
    assert threads.cgroup_cpu_limit(str(tmp_path / 'fs'), str(proc)) == pytest.approx(3.0)
    write(cpu / 'cpu.cfs_quota_us', '-1\n')
    assert threads.cgroup_cpu_limit(str(tmp_path / 'fs'), str(proc)) is None


def test_choose_threads_order():
    assert threads.choose_threads(3, environ={'OMP_NUM_THREADS': '7'}, cores=4) == (3, 'requested')
    assert threads.choose_threads(environ={'OMP_NUM_THREADS': '7'}, cores=4) == \
        (7, 'OMP_NUM_THREADS')
    assert threads.choose_threads(environ={'MXNET_OMP_MAX_THREADS': '5', 'OMP_NUM_THREADS': '7'},
                                  cores=4) == (5, 'MXNET_OMP_MAX_THREADS')
    assert threads.choose_threads(environ={}, cores=4) == (4, 'physical cores')
    assert threads.choose_threads(environ={'OMP_NUM_THREADS': 'lots'}, cores=4) == \
        (4, 'physical cores')
    with pytest.raises(ValueError):
        threads.choose_threads(0, environ={}, cores=4)


def test_decoding_workers_leave_the_cores_to_compute():
    assert threads.decoding_workers(cores=2) == 1
    assert threads.decoding_workers(cores=16) == 2
    assert threads.decoding_workers(cores=16, on_gpu=True) == 8
    assert threads.decoding_workers(cores=1, on_gpu=True) == 1


def test_cpu_info_flags(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx512f avx512_bf16 '
                    'amx_tile amx_bf16\n\nprocessor\t: 1\nmodel name\t: Some Xeon\n')
    assert threads.cpu_info(str(info)) == {'model': 'Some Xeon', 'avx512_bf16': True, 'amx': True}
    info.write_text('model name\t: Old\nflags\t\t: fpu avx2\n')
    assert threads.cpu_info(str(info)) == {'model': 'Old', 'avx512_bf16': False, 'amx': False}


PROBE = ('import ctypes, os, warnings, gluon_arcface as gaf; gaf.TrainBlock; '
         'print(os.environ.get("OMP_NUM_THREADS"), '
         'ctypes.CDLL("libgomp.so.1").omp_get_max_threads())')


def run(code, **env):
    clean = {k: v for k, v in os.environ.items() if k not in threads.THREAD_ENV}
    clean.update(env)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=clean, timeout=120)


def expected_cores():
    return threads.physical_cores(quota=threads.cgroup_cpu_limit())


def test_import_sets_the_threads_mxnet_computes_with():
    out = run(PROBE)
    assert out.returncode == 0, out.stderr
    n = expected_cores()
    assert out.stdout.split() == [str(n), str(n)]  # OpenMP in MXNet's process uses them
    assert 'RuntimeWarning' not in out.stderr


def test_the_users_omp_num_threads_wins():
    out = run(PROBE, OMP_NUM_THREADS='1')
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['1', '1']


def test_threads_option_of_a_script_reaches_mxnet(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / 'probe.py'
    script.write_text('import argparse, sys\nfrom gluon_arcface import cli\n'
                      'p = argparse.ArgumentParser()\ncli.add_threads_argument(p)\n'
                      'cli.parse_args(lambda: p, sys.argv[1:])\n' + PROBE.replace('; ', '\n'))
    out = subprocess.run([sys.executable, str(script), '--threads', '1'], capture_output=True,
                         text=True, timeout=120, cwd=root,
                         env={k: v for k, v in os.environ.items() if k not in threads.THREAD_ENV})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['1', '1']


def test_warning_when_mxnet_came_first():
    out = run('import mxnet, gluon_arcface')
    assert out.returncode == 0, out.stderr
    half = max(1, len(threads.allowed_cpus()) // 2)  # what MXNet 1.9.1 picks on x86
    if half != expected_cores():
        assert 'MXNet was loaded before gluon_arcface' in out.stderr
        assert 'computes with %d thread' % half in out.stderr
        assert 'OMP_NUM_THREADS=%d' % expected_cores() in out.stderr
        assert len([line for line in out.stderr.splitlines() if 'MXNet was loaded' in line]) == 1
    else:  # nothing to change on this machine: no warning
        assert 'RuntimeWarning' not in out.stderr
    # With the user's own setting nothing is overridden and nothing is said.
    out = run('import mxnet, gluon_arcface', OMP_NUM_THREADS='1')
    assert out.returncode == 0 and 'RuntimeWarning' not in out.stderr


def test_import_is_light_and_loads_mxnet_at_first_use():
    """`import gluon_arcface` imports neither MXNet (so the thread policy comes first) nor torch
    or matplotlib.pyplot; the first chapter name used loads MXNet."""
    code = ('import sys, gluon_arcface as gaf; '
            'heavy = ("mxnet", "torch", "matplotlib.pyplot"); '
            'print([m for m in heavy if m in sys.modules]); gaf.TrainBlock; '
            'print([m for m in heavy if m in sys.modules])')
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split('\n')[:2] == ['[]', "['mxnet']"]


AMX_CPU = {'model': 'test', 'avx512_bf16': True, 'amx': True}


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='x86-64 Linux only')
def test_amx_allowed_only_after_linux_grants_it():
    env, asked = {}, []
    ok, _ = threads.enable_amx(env, AMX_CPU, request=lambda: asked.append(1) or False)
    assert not ok and env == {} and asked  # without the permission an AMX kernel would crash
    if threads.platform.machine().lower() in ('x86_64', 'amd64'):
        ok, _ = threads.enable_amx(env, AMX_CPU, request=lambda: True)
        assert ok and env['DNNL_MAX_CPU_ISA'] == 'AVX512_CORE_AMX'
        assert threads.onednn_uses_amx(env)


def test_amx_left_alone_without_it_or_when_the_user_decided():
    never = lambda: pytest.fail('asked for AMX')  # noqa: E731
    for env, info in [({}, dict(AMX_CPU, amx=False)),
                      ({'GLUON_ARCFACE_AMX': '0'}, AMX_CPU),
                      ({'DNNL_MAX_CPU_ISA': 'AVX512_CORE_BF16'}, AMX_CPU),
                      ({'ONEDNN_MAX_CPU_ISA': 'AVX2'}, AMX_CPU)]:
        before = dict(env)
        ok, why = threads.enable_amx(env, info, request=never)
        assert not ok and env == before, why
    assert not threads.onednn_uses_amx({'DNNL_MAX_CPU_ISA': 'AVX512_CORE_BF16'})


def test_amx_inherited_from_a_parent_asks_for_the_permission_again():
    """A child process inherits DNNL_MAX_CPU_ISA but not Linux's AMX permission."""
    asked = []
    env = {'DNNL_MAX_CPU_ISA': 'AVX512_CORE_AMX'}
    ok, _ = threads.enable_amx(env, AMX_CPU, request=lambda: asked.append(1) or True)
    assert ok and asked == [1]


@pytest.mark.skipif(not threads.cpu_info()['amx'], reason='this CPU has no AMX')
def test_bfloat16_runs_on_amx_after_import():
    """On an AMX CPU, a bfloat16 convolution after `import gluon_arcface` runs oneDNN's AMX
    kernel (DNNL_VERBOSE names it) and the process lives."""
    code = ('import gluon_arcface as gaf, mxnet as mx; from mxnet import np; '
            'net = gaf.get_faceresnet(18, 8, False); '
            'gaf.model.set_compute_dtype(net, "bfloat16"); net.hybridize(); '
            'print(net(np.ones((2, 3, 32, 32))).asnumpy().shape)')
    out = run(code, DNNL_VERBOSE='1')
    assert out.returncode == 0, out.stderr[-2000:]
    assert '(2, 8)' in out.stdout
    if 'refused' not in threads.enable_amx({}, request=threads._request_amx_permission)[1]:
        assert 'avx512_core_amx' in out.stdout


def test_amp_training_turns_our_amx_setting_off(monkeypatch, tmp_path):
    """oneDNN 2.4's AMX kernels train bfloat16 slower than its AVX512-BF16 ones: an amp run
    (the command line, its --resume, or fit from Python) removes the variable the package set,
    before it touches data; a user's own setting stays; a float32 run leaves it."""
    from gluon_arcface import recipe
    from gluon_arcface.train.config import TrainConfig
    env = {}
    if threads.platform.machine().lower() in ('x86_64', 'amd64') and \
            sys.platform.startswith('linux'):
        assert threads.enable_amx(env, AMX_CPU, request=lambda: True)[0]
        assert threads.disable_amx(env) and env == {}
        # A child process (a distributed worker) inherits our setting and may still drop it.
        assert threads.enable_amx(env, AMX_CPU, request=lambda: True)[0]
        child = dict(env)
        assert threads.enable_amx(child, AMX_CPU, request=lambda: True)[0]
        assert threads.disable_amx(child) and child == {}
    user = {'DNNL_MAX_CPU_ISA': 'AVX512_CORE_AMX'}
    assert not threads.disable_amx(user) and user == {'DNNL_MAX_CPU_ISA': 'AVX512_CORE_AMX'}

    calls = []
    monkeypatch.setattr(recipe, 'disable_amx', lambda: calls.append('off'))
    for amp in (True, False):
        config = TrainConfig(amp=amp, data_dir=str(tmp_path / 'missing'),
                             output=str(tmp_path / 'out'), progress=False)
        with pytest.raises(FileNotFoundError, match='missing'):
            recipe.fit(config)
    assert calls == ['off']
