/* convext_omp.h: the few OpenMP queries the kernels need, with serial stand-ins.
 *
 * The extension is built with OpenMP when the compiler has it (setup.py probes for it)
 * and without it otherwise.  The Cython code includes this header instead of <omp.h>,
 * so that one source compiles either way: without _OPENMP, prange loops run serially
 * and these functions report a single thread.
 */
#ifndef CONVEXT_OMP_H
#define CONVEXT_OMP_H

#ifdef _OPENMP
#include <omp.h>

static inline int convext_openmp_enabled(void) { return 1; }
static inline int convext_omp_thread_num(void) { return omp_get_thread_num(); }

#else

static inline int convext_openmp_enabled(void) { return 0; }
static inline int convext_omp_thread_num(void) { return 0; }

#endif /* _OPENMP */

/* 1 when setup.py compiled the kernels with Cython's bounds checks on. */
#ifndef CONVEXT_CYTHON_DEBUG
#define CONVEXT_CYTHON_DEBUG 0
#endif

/* 1 in a profiling build (CONVEXT_PROFILE=1): Cython tracing and debug symbols. */
#ifndef CONVEXT_PROFILE_BUILD
#define CONVEXT_PROFILE_BUILD 0
#endif

#endif /* CONVEXT_OMP_H */
