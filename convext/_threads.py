"""One thread count for convext's OpenMP kernels and the BLAS behind NumPy."""

import logging
import os

from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

_num_threads = None
_blas_limit = None


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


def set_num_threads(n_threads):
    """Set the thread count of both the OpenMP kernels and the BLAS pool.

    Parameters
    ----------
    n_threads : int or None
        A positive count, or None to go back to the default (OMP_NUM_THREADS when
        set, else the number of usable cores).
    """
    global _num_threads, _blas_limit
    if n_threads is not None:
        if isinstance(n_threads, bool) or not isinstance(n_threads, int):
            raise TypeError(
                f"set_num_threads: n_threads must be an int or None, "
                f"got {type(n_threads).__name__}"
            )
        if n_threads < 1:
            raise ValueError(
                f"set_num_threads: n_threads must be >= 1, got {n_threads}"
            )
    _num_threads = _default_num_threads() if n_threads is None else n_threads

    # Limits the BLAS that NumPy's matrix products call, so that it and the
    # OpenMP loops never run more threads than asked for between them.
    if _blas_limit is not None:
        _blas_limit.restore_original_limits()
    _blas_limit = threadpool_limits(limits=_num_threads, user_api="blas")
    logger.debug("convext threads set to %d", _num_threads)
