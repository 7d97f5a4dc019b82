// oneDNN (Debian's libdnnl-dev; no pkg-config file): the C API of its matrix-multiplication primitive.
#include <oneapi/dnnl/dnnl.h>
