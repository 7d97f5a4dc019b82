#include "ccommbench.h"

double ccb_begin(MPI_Comm comm) {
    MPI_Barrier(comm);
    return MPI_Wtime();
}

double ccb_end(double t0, MPI_Comm comm) {
    double dt = MPI_Wtime() - t0, worst = dt;
    if (MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, comm) != MPI_SUCCESS) return -1;
    return worst;
}

double ccb_allreduce_seconds(float *buf, int count, int iters, MPI_Comm comm) {
    int failed = 0;
    double t0 = ccb_begin(comm);
    for (int i = 0; i < iters; i++)
        failed |= MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, comm) != MPI_SUCCESS;
    double dt = ccb_end(t0, comm);
    return failed ? -1 : dt;
}

double ccb_wtick(void) { return MPI_Wtick(); }
