// Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are C macros that cast addresses of
// incomplete structs; Swift cannot import them. These inline getters expose them at zero cost.
#include <mpi.h>

static inline MPI_Comm       tmpi_comm_world(void)        { return MPI_COMM_WORLD; }
static inline MPI_Comm       tmpi_comm_null(void)         { return MPI_COMM_NULL; }
static inline MPI_Datatype   tmpi_float(void)             { return MPI_FLOAT; }
static inline MPI_Datatype   tmpi_double(void)            { return MPI_DOUBLE; }
static inline MPI_Datatype   tmpi_int32(void)             { return MPI_INT32_T; }
static inline MPI_Datatype   tmpi_int64(void)             { return MPI_INT64_T; }
static inline MPI_Datatype   tmpi_uint16(void)            { return MPI_UINT16_T; }
static inline MPI_Datatype   tmpi_byte(void)              { return MPI_BYTE; }
static inline MPI_Op         tmpi_op_sum(void)            { return MPI_SUM; }
static inline MPI_Op         tmpi_op_max(void)            { return MPI_MAX; }
static inline MPI_Op         tmpi_op_min(void)            { return MPI_MIN; }
static inline MPI_Errhandler tmpi_errors_return(void)     { return MPI_ERRORS_RETURN; }
static inline void          *tmpi_in_place(void)          { return MPI_IN_PLACE; }
static inline MPI_Status    *tmpi_status_ignore(void)     { return MPI_STATUS_IGNORE; }
static inline MPI_Status    *tmpi_statuses_ignore(void)   { return MPI_STATUSES_IGNORE; }
static inline MPI_Request    tmpi_request_null(void)      { return MPI_REQUEST_NULL; }
