"""The launcher process of :func:`gluon_arcface.train.launcher.launch`.

``python .../gluon_arcface/_launch_boot.py LAUNCH_PY HOST_IP ARGS...`` runs MXNet's launcher script
``LAUNCH_PY`` with ``ARGS``, with three changes: dmlc_tracker's ``Thread.isAlive`` (removed in
Python 3.9) restored; when a process of the job exits non-zero, this process exits with its
status (MXNet's tracker would keep waiting for the scheduler, which waits for the dead worker);
and, when ``HOST_IP`` is not empty, the tracker told this machine's address.
"""
import os
import re
import runpy
import sys
import threading

# dmlc_tracker calls Thread.isAlive, which Python 3.9 removed.
threading.Thread.isAlive = threading.Thread.is_alive


def _process_failed(args):
    # The tracker runs each process from a thread that raises when the process exits non-zero,
    # then keeps waiting for the scheduler, which waits for the dead worker: exit instead, with
    # the process's status, so that the front end stops the job.
    code = getattr(args.exc_value, 'returncode', None)
    text = str(args.exc_value)
    if code is None:
        found = re.search(r'return code=(-?\d+)', text)
        code = int(found.group(1)) if found else 1
    role = re.search(r"'DMLC_ROLE': '(\w+)'", text)
    task = re.search(r"'DMLC_TASK_ID': '(\d+)'", text)
    who = '%s %s' % (role.group(1), task.group(1)) if role and task else 'a process'
    status = 128 - code if code < 0 else (code if 0 < code < 256 else 1)
    sys.stderr.write('launch: %s exited with status %s; stopping the job\n' % (who, code))
    sys.stderr.flush()
    os._exit(status)

def main():
    threading.excepthook = _process_failed
    launcher, host_ip = sys.argv[1], sys.argv[2]
    if host_ip:
        import dmlc_tracker.tracker
        dmlc_tracker.tracker.get_host_ip = lambda *args: host_ip
    sys.argv = [launcher] + sys.argv[3:]
    runpy.run_path(launcher, run_name='__main__')


if __name__ == '__main__':
    main()
