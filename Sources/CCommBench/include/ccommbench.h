// Plain C MPI reference loops for `tessera bench-comm`: the Swift communication layer is measured
// against these, in the same process, on the same buffers. No Swift runs inside the timed loops.
#ifndef CCOMMBENCH_H
#define CCOMMBENCH_H

#include <mpi.h>

/// Barrier on `comm`, then MPI_Wtime: the start of a timed region (every rank leaves the barrier together).
double ccb_begin(MPI_Comm comm);

/// Seconds since `t0` (from ccb_begin), the maximum over the ranks of `comm` (MPI_Allreduce MAX), so
/// every rank gets the same value.
double ccb_end(double t0, MPI_Comm comm);

/// ccb_begin, then `iters` plain MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, comm), then
/// ccb_end: elapsed seconds of the whole loop, max over ranks. Returns a negative value if a call failed.
double ccb_allreduce_seconds(float *buf, int count, int iters, MPI_Comm comm);

/// MPI_Wtime's resolution in seconds.
double ccb_wtick(void);

#endif
