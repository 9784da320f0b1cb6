"""Imported into every Beam worker (``--beam_plugin``): frees TF objects before exit.

TFX's Beam steps (Transform's analyzers, TFMA's model evaluation) load
SavedModels through Beam's process-wide shared-object cache
(``apache_beam.utils.shared``). The cache keeps the last loaded model alive
until the interpreter tears its modules down; TF's function objects then
run their finalizers after TF's own module globals are gone, and each prints
"Exception ignored in: AtomicFunction.__del__ ... TypeError" (about a
hundred per run). An exit hook registered here runs before that teardown:
it drops the cache's references and collects, so the objects are freed
while TF is intact. Beam offers no public call to empty the cache, so this
touches its module-level map (checked by ``tests/test_worker_exit.py``).
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import threading
import time


def release_shared_objects() -> int:
    """Drops Beam's cached shared objects and collects; returns how many were cached.

    Does nothing in a process that never imported Beam's shared-object module
    (nothing is cached there, and importing at exit is not safe).
    """
    shared = sys.modules.get("apache_beam.utils.shared")
    cache = getattr(shared, "_shared_map", None)
    if cache is None:
        return 0
    with cache._lock:  # pylint: disable=protected-access
        n = len(cache._cache_map)  # pylint: disable=protected-access
        cache._cache_map.clear()  # pylint: disable=protected-access
        cache._keepalive = None  # pylint: disable=protected-access
    gc.collect()
    return n


atexit.register(release_shared_objects)

#: The Beam flag that imports this module into every SDK worker.
BEAM_PLUGIN_FLAG = f"--beam_plugin={__name__}"


def exit_with_parent(parent_pid: int, poll_s: float = 1.0, group: bool = False
                     ) -> threading.Thread:
    """Ends this process when ``parent_pid``, the process that started it, is gone.

    For the child processes the pipeline starts and waits on (training
    workers, the Beam worker pool): if their parent is killed, they would
    otherwise run on, a training worker waiting in a collective op for ever.
    A daemon thread polls this process's parent pid (an orphan is
    re-parented) and exits at once; the parent passes its pid, so a parent
    that died before this call is noticed too. Safe with threads, unlike a
    ``preexec_fn`` in the parent. With ``group``, the process leads its own
    process group and takes the group (its own children) with it.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        if group:
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
