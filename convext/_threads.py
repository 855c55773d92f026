"""One thread count for convext's kernels, and a single-threaded BLAS under them.

convext's kernels split their work over OpenMP threads, and its matrix products
call the BLAS from inside those threads, one block of rows each. A BLAS that
started threads of its own there would oversubscribe the cores (and an idle
OpenBLAS pool spins, taking a core from the kernels that follow it), so while
convext's code runs, every BLAS the process has loaded is limited to one thread.
The user's own NumPy code outside convext keeps its BLAS settings.
"""

import contextlib
import logging
import os
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

logger = logging.getLogger(__name__)

_num_threads = None
_controller = None


def _default_num_threads():
    """OMP_NUM_THREADS when set to a positive integer, else the usable cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def get_num_threads():
    """The number of threads the kernels and the BLAS use."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    return _num_threads


# Below this many elements of work a kernel runs on the calling thread alone. With
# passive waiting, waking a second OpenMP thread costs about 0.1 ms, more than the
# work: ReLU over 2^15 floats took 0.004 ms on one thread and 0.1 ms on two, over
# 2^18 floats 0.025 ms and 0.11 ms.
SMALL_WORK = 1 << 18


# The kernels take the thread count as a C int; libgomp caps it far lower anyway.
MAX_THREADS = 1 << 16


def threads_for(work):
    """Threads for a kernel call doing about ``work`` elements of work."""
    return 1 if work < SMALL_WORK else get_num_threads()


def set_num_threads(n_threads):
    """Set the number of threads of convext's kernels.

    Parameters
    ----------
    n_threads : int or None
        A positive count, or None to go back to the default (OMP_NUM_THREADS when
        set, else the number of usable cores). The BLAS runs inside these threads,
        single-threaded, so this one number bounds the threads convext uses.
    """
    global _num_threads
    if n_threads is not None:
        if isinstance(n_threads, bool) or not isinstance(
                n_threads, (int, np.integer)):
            raise TypeError(
                f"set_num_threads: n_threads must be an int or None, "
                f"got {type(n_threads).__name__}"
            )
        if not 1 <= n_threads <= MAX_THREADS:
            raise ValueError(
                f"set_num_threads: n_threads must be in 1..{MAX_THREADS}, got "
                f"{n_threads}"
            )
    _num_threads = (_default_num_threads() if n_threads is None
                    else int(n_threads))
    logger.debug("convext threads set to %d", _num_threads)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None


@contextlib.contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS to one thread for the duration of the block.

    Blocks entered from several Python threads at once share one limit: the first
    to enter sets it and the last to leave restores the BLAS's own thread counts.
    Each restoring what it found on entry, they left the BLAS at one thread for
    good when their blocks overlapped.
    """
    global _controller, _blas_users, _blas_limiter
    with _blas_lock:
        if _controller is None:
            # Made once: scanning the loaded libraries costs about a millisecond,
            # a limit on a known set about ten microseconds.
            _controller = ThreadpoolController()
        if _blas_users == 0:
            _blas_limiter = _controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None
