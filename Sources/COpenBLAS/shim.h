// OpenBLAS: CBLAS plus the thread-control and configuration entry points.
#include <cblas.h>
