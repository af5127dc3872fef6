"""kvstore dist_sync training on 127.0.0.1 and the launcher front end (scripts/launch.py).

Each cluster test starts a scheduler, one server and two workers as separate processes with the
DMLC_* environment on a free port, and kills whatever is left in ``finally``.
"""
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as onp
import pytest

import mxnet as mx
from mxnet import gluon

import gluon_arcface as gaf
from gluon_arcface import distributed, launcher, threads

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 90  # seconds for one cluster run; a run here takes 5-10 s

# A worker of the training test. The test imports it too, to build the single-process reference.
WORKER = '''
import json, sys
import numpy as onp
import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn
import gluon_arcface as gaf
from gluon_arcface import distributed

CLASSES, EMB, BATCH = 4, 8, 8  # BATCH: images per worker and step
OPT = {'learning_rate': 0.1, 'wd': 5e-4, 'momentum': 0.9}


class Net(nn.HybridBlock):
    """Dense (input size inferred at the first batch) + BatchNorm + ArcFace head."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.dense = nn.Dense(EMB)
            self.bn = nn.BatchNorm(in_channels=EMB)
            self.head = gaf.ArcMarginBlock(EMB, CLASSES)

    def hybrid_forward(self, F, x, y):
        return self.head(self.bn(self.dense(x)), y)


def build_net(seed):
    mx.random.seed(seed)
    net = Net()
    net.dense.initialize(mx.init.Xavier())
    net.bn.initialize()
    return net


def shard(rank, num_workers, n=64):
    """Worker ``rank``'s images: every num_workers-th of a fixed set, as load_data_face_rec."""
    rng = onp.random.RandomState(0)
    y = onp.arange(n) % CLASSES
    X = (rng.uniform(size=(n, 3, 8, 8)) + 0.3 * y[:, None, None, None]).astype('float32')
    return X[rank::num_workers], y[rank::num_workers].astype('int32')


def loader(rank, num_workers):
    return gluon.data.DataLoader(gluon.data.ArrayDataset(*shard(rank, num_workers)),
                                 batch_size=BATCH, shuffle=False, last_batch='discard')


def main(cfg):
    kv = distributed.create_kvstore('dist_sync')
    net = build_net(cfg['seed'] + 1000 * kv.rank)  # rank 0's initial values must win
    trainer = distributed.create_trainer(net.collect_params(), 'sgd', OPT, kv)
    history = gaf.train_ch_facerec(
        net, loader(kv.rank, kv.num_workers), gluon.loss.SoftmaxCrossEntropyLoss(), trainer,
        cfg['epochs'], mx.cpu(), lr_steps=[1], checkpoint_dir=cfg['checkpoints'][kv.rank],
        resume=cfg['resume'], progress=False)
    net.save_parameters(cfg['results'] + '/rank%d.params' % kv.rank)
    with open(cfg['results'] + '/rank%d.json' % kv.rank, 'w') as f:
        json.dump(history, f)


if __name__ == '__main__':
    main(json.loads(sys.argv[1]))
'''


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_cluster(tmp_path, command, cwds=(None, None), name='run'):
    """Scheduler, server and two workers running ``command`` on 127.0.0.1.

    Returns the workers' ``(exit status, output)``; scheduler and server must end by themselves
    when the workers succeed. Every process still running at the end is killed.
    """
    env = dict(os.environ, DMLC_PS_ROOT_URI='127.0.0.1', DMLC_PS_ROOT_PORT=str(free_port()),
               DMLC_NUM_SERVER='1', DMLC_NUM_WORKER='2', DMLC_NODE_HOST='127.0.0.1',
               OMP_NUM_THREADS='1')
    procs, logs = [], []
    try:
        for role, cmd, cwd in [('scheduler', [sys.executable, '-c', 'import mxnet'], None),
                               ('server', [sys.executable, '-c', 'import mxnet'], None),
                               ('worker', command, cwds[0]), ('worker', command, cwds[1])]:
            log = tmp_path / ('%s-%s%d.log' % (name, role, len(procs)))
            with open(log, 'wb') as out:
                procs.append(subprocess.Popen(cmd, cwd=cwd, env=dict(env, DMLC_ROLE=role),
                                              stdout=out, stderr=subprocess.STDOUT))
            logs.append(log)
        deadline = time.time() + TIMEOUT
        status = [procs[i].wait(timeout=max(1, deadline - time.time())) for i in (2, 3)]
        if status == [0, 0]:
            assert [p.wait(timeout=30) for p in procs[:2]] == [0, 0]
        return [(s, logs[i].read_text()) for s, i in zip(status, (2, 3))]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def load_worker_module(path):
    spec = importlib.util.spec_from_file_location('dist_worker', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(folder):
    """Files under ``folder`` (relative paths) with their sizes and modification times."""
    return {(os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)),
             os.path.getmtime(os.path.join(d, f)))
            for d, _, files in os.walk(folder) for f in files}


def params_of(path):
    net = mx.npx.load(str(path))
    return {k: v.asnumpy() for k, v in net.items()}


def test_dist_sync_training_matches_one_process_and_resumes(tmp_path):
    """Two workers, each on its half of the images, end with identical parameters, equal to one
    process whose two devices hold the two workers' batches (the update is the mean gradient
    over the global batch; BatchNorm statistics per worker, averaged after each epoch). Rank 0
    alone writes checkpoints; the workers resume from copies of them and go on as if
    uninterrupted (parameters, momentum and learning-rate step)."""
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    results = tmp_path / 'results'
    results.mkdir()
    ck = [str(tmp_path / 'ck0'), str(tmp_path / 'ck1')]
    cfg = dict(seed=7, checkpoints=ck, results=str(results), epochs=1, resume=False)

    runs = run_cluster(tmp_path, [sys.executable, str(script), json.dumps(cfg)], name='first')
    assert [s for s, _ in runs] == [0, 0], runs
    assert os.path.isfile(os.path.join(ck[0], 'epoch-0001.params'))
    assert not os.path.exists(ck[1])  # rank 1 wrote nothing
    shutil.copytree(ck[0], ck[1])  # "a copy of the checkpoints on every machine"
    copied = tree(tmp_path / 'ck1')
    cfg.update(epochs=2, resume=True)
    runs = run_cluster(tmp_path, [sys.executable, str(script), json.dumps(cfg)], name='resumed')
    assert [s for s, _ in runs] == [0, 0], runs
    assert tree(tmp_path / 'ck1') == copied  # rank 1 wrote nothing
    assert json.loads((tmp_path / 'ck0' / 'checkpoint.json').read_text())['epoch'] == 2

    w0, w1 = params_of(results / 'rank0.params'), params_of(results / 'rank1.params')
    assert w0.keys() == w1.keys() and any('running_var' in k for k in w0)
    for k in w0:
        onp.testing.assert_array_equal(w0[k], w1[k], err_msg=k)

    # The reference: one process, two devices, each device's batch a worker's batch.
    worker = load_worker_module(script)
    ref = worker.build_net(cfg['seed'])
    ref.collect_params().reset_ctx([mx.cpu(0), mx.cpu(1)])
    parts = [worker.loader(rank, 2) for rank in (0, 1)]
    batches = [(mx.np.concatenate([a[0], b[0]]), mx.np.concatenate([a[1], b[1]]))
               for a, b in zip(*parts)]
    trainer = gluon.Trainer(ref.collect_params(), 'sgd', worker.OPT)
    # As WorkerGroup.start does in the workers: parameters complete and on every device before
    # the first batch (a local Trainer copies device 0's BatchNorm statistics over the others'
    # at its first step otherwise).
    ref(batches[0][0][:2].as_in_ctx(mx.cpu(0)), batches[0][1][:2].as_in_ctx(mx.cpu(0)))
    trainer._init_kvstore()
    trainer._init_params()
    hist_ref = gaf.train_ch_facerec(ref, batches, gluon.loss.SoftmaxCrossEntropyLoss(), trainer,
                                    2, [mx.cpu(0), mx.cpu(1)], lr_steps=[1], progress=False)
    want = {k: p.data(mx.cpu(0)).asnumpy() for k, p in ref._collect_params_with_prefix().items()}
    assert want.keys() == w0.keys()
    for k in want:
        onp.testing.assert_allclose(w0[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    hist = json.loads((results / 'rank0.json').read_text())
    assert [r['lr'] for r in hist['epochs']] == pytest.approx([0.1, 0.01])
    for got, ref_epoch in zip(hist['epochs'], hist_ref['epochs']):  # both workers' images
        assert got['loss'] == pytest.approx(ref_epoch['loss'], rel=1e-4)
        assert got['train_acc'] == pytest.approx(ref_epoch['train_acc'])


def test_workers_that_see_different_checkpoints_stop(tmp_path, make_tiny_rec):
    """train.py --resume: a worker without the checkpoints makes every worker stop with a clear
    error instead of training out of step; the worker of rank 1 wrote nothing."""
    data = tmp_path / 'data'
    data.mkdir()
    make_tiny_rec(data, 2)
    cwds = [tmp_path / 'machine0', tmp_path / 'machine1']
    for cwd in cwds:
        cwd.mkdir()
    ck = cwds[0] / 'out' / 'checkpoints'  # only machine 0 has a checkpoint
    ck.mkdir(parents=True)
    (ck / 'checkpoint.json').write_text(json.dumps(
        dict(epoch=1, params='epoch-0001.params', states='epoch-0001.states', history={})))
    command = [sys.executable, os.path.join(REPO, 'scripts', 'train.py'), '--data-dir', str(data),
               '--val-targets', '', '--emb-size', '8', '--batch-size', '8', '--epochs', '2',
               '--ctx', 'cpu', '--kvstore', 'dist_sync', '--output', 'out', '--resume',
               '--no-progress']
    before = [tree(cwd) for cwd in cwds]
    runs = run_cluster(tmp_path, command, cwds=cwds)
    assert [s for s, _ in runs] == [1, 1], runs
    for _, output in runs:
        assert 'error: the workers disagree on the epoch to resume from' in output, output
    rank1 = [i for i, (_, output) in enumerate(runs) if 'worker 1 has' in output]
    assert len(rank1) == 1
    assert tree(cwds[rank1[0]]) == before[rank1[0]]


def live_processes_with(marker):
    """PIDs of running (not zombie) processes whose command line contains ``marker``."""
    pids = []
    for pid in os.listdir('/proc'):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmdline = f.read().decode(errors='replace')
            with open('/proc/%s/stat' % pid) as f:
                state = f.read().rsplit(')', 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != 'Z':
            pids.append(int(pid))
    return pids


def test_launch_script_runs_a_job(tmp_path):
    """scripts/launch.py -n 2 -s 1 --launcher local: both workers sum a value through the
    server; exit status 0. The two workers share this machine's physical cores (OpenMP threads).
    """
    script = tmp_path / 'sum.py'
    script.write_text(textwrap.dedent('''
        import os, sys, mxnet as mx
        kv = mx.kv.create('dist_sync')
        value = mx.nd.array([kv.rank + 1.0])
        kv.init(0, mx.nd.zeros(1))
        kv.pushpull(0, value, out=value)
        with open(sys.argv[1] + '/rank%d' % kv.rank, 'w') as f:
            f.write('%g of %d, %s threads' % (value.asscalar(), kv.num_workers,
                                              os.environ.get('OMP_NUM_THREADS')))
    '''))
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_ENV}
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, 'scripts', 'launch.py'), '-n', '2', '-s', '1',
         '--launcher', 'local', '--timeout', str(TIMEOUT), '--', sys.executable, str(script),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=TIMEOUT + 30)
    assert out.returncode == 0, out.stderr
    shared = max(1, threads.physical_cores(quota=threads.cgroup_cpu_limit()) // 2)
    assert [(tmp_path / f).read_text() for f in ('rank0', 'rank1')] == \
        ['3 of 2, %d threads' % shared] * 2
    assert not live_processes_with(str(script))
    # --threads sets them explicitly.
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, 'scripts', 'launch.py'), '-n', '2', '-s', '1',
         '--threads', '3', '--timeout', str(TIMEOUT), '--', sys.executable, str(script),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=TIMEOUT + 30)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / 'rank1').read_text() == '3 of 2, 3 threads'


def test_launch_stops_the_job_when_a_worker_dies(tmp_path, capfd):
    """MXNet's local launcher alone waits forever when a worker exits non-zero (the scheduler
    waits for it); gaf.launch returns the worker's status and leaves no process behind."""
    script = tmp_path / 'die.py'
    script.write_text(textwrap.dedent('''
        import os, mxnet as mx
        kv = mx.kv.create('dist_sync')
        if kv.rank == 1:
            os._exit(3)
        kv.init(0, mx.nd.zeros(1))  # waits for rank 1 forever
    '''))
    start = time.time()
    status = launcher.launch([sys.executable, str(script)], 2, 1, timeout=TIMEOUT)
    assert status == 3
    assert time.time() - start < TIMEOUT
    assert 'exited with status 3; stopping the job' in capfd.readouterr().err
    assert not live_processes_with(str(script))


def test_setup_errors_say_what_is_expected(monkeypatch):
    for name in distributed.DMLC_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedError, match='DMLC_ROLE.*scripts/launch.py'):
        distributed.create_kvstore('dist_sync')
    with pytest.raises(ValueError, match='expected one of device, local, dist_sync'):
        distributed.create_kvstore('dist')
    assert distributed.create_kvstore('device') == 'device'
    net = gluon.nn.Dense(2, in_units=2)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', kvstore='dist_sync')
    with pytest.raises(distributed.DistributedError, match='create_kvstore'):
        distributed.WorkerGroup.of(trainer)
    local = distributed.WorkerGroup.of(gluon.Trainer(net.collect_params(), 'sgd'))
    assert (local.rank, local.num_workers, local.is_master, local.grad_scale) == (0, 1, True, 1)
    with pytest.raises(ValueError, match='ssh launcher needs a host file'):
        launcher.launch(['true'], 2, launcher='ssh')
    with pytest.raises(ValueError, match='need quoting: a b'):
        launcher.launch(['echo', 'a b'], 2, launcher='ssh', hostfile='hosts')


def test_averaging_running_statistics_keeps_the_momentum():
    """sync_aux_states (devices) writes in place: Parameter.set_data would make a Trainer that
    updates on its kvstore (several devices) rebuild it, dropping the momentum of every epoch."""
    from gluon_arcface.train.training import sync_aux_states
    ctx = [mx.cpu(0), mx.cpu(1)]
    X = mx.np.array(onp.random.RandomState(0).uniform(size=(8, 5)).astype('float32'))
    nets, trainers = [], []
    for _ in range(2):
        mx.random.seed(0)
        net = gluon.nn.HybridSequential()
        net.add(gluon.nn.Dense(3, in_units=5), gluon.nn.BatchNorm(in_channels=3))
        net.initialize(ctx=ctx)
        nets.append(net)
        trainers.append(gluon.Trainer(net.collect_params(), 'sgd',
                                      {'learning_rate': 0.1, 'momentum': 0.9}))
    for step in range(2):
        for i, (net, trainer) in enumerate(zip(nets, trainers)):
            with mx.autograd.record():
                losses = [(net(x) ** 2).sum() for x in gluon.utils.split_and_load(X, ctx)]
            mx.autograd.backward(losses)
            trainer.step(8)
            if i == 0 and step == 0:
                sync_aux_states(net)
    for a, b in zip(nets[0].collect_params().values(), nets[1].collect_params().values()):
        if a.grad_req != 'null':
            onp.testing.assert_allclose(a.data(ctx[0]).asnumpy(), b.data(ctx[0]).asnumpy(),
                                        rtol=1e-6, err_msg=a.name)
