/* Float64 accumulation kernels for streaming FedAvg, with no scratch memory.
 *
 * Plain CPython extension: arrays arrive through the buffer protocol, so there
 * is no numpy build dependency. Every loop runs without the GIL. The Python
 * wrappers and the pure-numpy fallback live in _kernels.py; this module checks
 * its own arguments as well, because a wrong length here is memory corruption,
 * not an exception.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

/* a*b + c stays two roundings, as in numpy's separate multiply and add, so axpy
 * agrees with the fallback bit for bit on targets with FMA (aarch64), where gcc
 * would otherwise fuse it. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* Independent partial sums: gcc does not vectorize a single floating-point
 * running sum without -ffast-math (it would reorder it), but it does vectorize
 * LANES independent ones, which also round less than one long chain. */
#define LANES 8

/* Get a C-contiguous buffer of float32 or float64 ("f"/"d", optionally with a
 * "<" or "=" prefix). Returns the type char, or 0 with an exception set (and
 * nothing to release). */
static char
get_vec(PyObject *obj, Py_buffer *view, int writable, const char *fn, const char *name)
{
    const int base = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;

    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a buffer such as a numpy array, not %.100s",
                     fn, name, Py_TYPE(obj)->tp_name);
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, base | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Clear();
        /* Ask again without WRITABLE only to say which requirement failed. */
        if (writable && PyObject_GetBuffer(obj, view, base) == 0) {
            PyBuffer_Release(view);
            PyErr_Format(PyExc_ValueError, "%s: %s is read-only", fn, name);
        } else {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s: %s must be C-contiguous", fn, name);
        }
        return 0;
    }
    const char *f = view->format ? view->format : "B";
#if PY_LITTLE_ENDIAN
    if (*f == '<' || *f == '=')
#else
    if (*f == '=')
#endif
        f++;
    if (f[0] != '\0' && f[1] == '\0'
        && ((f[0] == 'f' && view->itemsize == sizeof(float))
            || (f[0] == 'd' && view->itemsize == sizeof(double))))
        return f[0];
    PyErr_Format(PyExc_TypeError, "%s: %s must hold float32 or float64, not format '%s'",
                 fn, name, view->format ? view->format : "B");
    PyBuffer_Release(view);
    return 0;
}

/* A float64 buffer (the accumulator): like get_vec, but only "d". */
static int
get_f64(PyObject *obj, Py_buffer *view, int writable, const char *fn, const char *name)
{
    char t = get_vec(obj, view, writable, fn, name);
    if (t == 'd')
        return 0;
    if (t) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s: %s must be float64, not float32", fn, name);
    }
    return -1;
}

static Py_ssize_t
count(const Py_buffer *view)
{
    return view->len / view->itemsize;
}

/* One copy of each read kernel per input type (T = float or double). Plain -O3
 * (SSE2 on x86-64): AVX2 and AVX-512 builds of axpy measured no faster at 1M
 * and 10M params, where the loop is bound by memory bandwidth, not arithmetic. */
#define KERNELS(T, SUF)                                                          \
    static void axpy_##SUF(double *acc, const T *x, Py_ssize_t n, double w)      \
    {                                                                            \
        for (Py_ssize_t i = 0; i < n; i++)                                       \
            acc[i] += w * (double)x[i];                                          \
    }                                                                            \
    static double dist2_##SUF(const double *acc, const T *x, Py_ssize_t n,       \
                              double inv)                                        \
    {                                                                            \
        double s[LANES] = {0}, t = 0.0;                                          \
        Py_ssize_t i = 0;                                                        \
        for (; i + LANES <= n; i += LANES)                                       \
            for (int k = 0; k < LANES; k++) {                                    \
                double d = (double)x[i + k] - acc[i + k] * inv;                  \
                s[k] += d * d;                                                   \
            }                                                                    \
        for (; i < n; i++) {                                                     \
            double d = (double)x[i] - acc[i] * inv;                              \
            t += d * d;                                                          \
        }                                                                        \
        for (int k = 0; k < LANES; k++)                                          \
            t += s[k];                                                           \
        return t;                                                                \
    }                                                                            \
    static double sumsq_##SUF(const T *x, Py_ssize_t n)                          \
    {                                                                            \
        double s[LANES] = {0}, t = 0.0;                                          \
        Py_ssize_t i = 0;                                                        \
        for (; i + LANES <= n; i += LANES)                                       \
            for (int k = 0; k < LANES; k++)                                      \
                s[k] += (double)x[i + k] * (double)x[i + k];                     \
        for (; i < n; i++)                                                       \
            t += (double)x[i] * (double)x[i];                                    \
        for (int k = 0; k < LANES; k++)                                          \
            t += s[k];                                                           \
        return t;                                                                \
    }                                                                            \
    static int all_finite_##SUF(const T *x, Py_ssize_t n)                        \
    {                                                                            \
        int bad = 0;                                                             \
        for (Py_ssize_t i = 0; i < n; i++)                                       \
            bad |= !isfinite(x[i]);                                              \
        return !bad;                                                             \
    }

KERNELS(float, f)

#if defined(__SSE2__)
#include <emmintrin.h>
/* The float32 axpy by hand: gcc 12's own vectorization of axpy_f converts the
 * upper two floats through a store to the stack and a reload on every iteration
 * (seen in objdump); this keeps them in registers. On the shared benchmark machine
 * the difference was within the run-to-run spread, so this is for the code, not a
 * measured speed-up. The arithmetic is the same (one rounding for the product, one
 * for the sum), so it agrees with the scalar loop and the numpy fallback bit for bit. */
static void
axpy_f_sse2(double *acc, const float *x, Py_ssize_t n, double w)
{
    const __m128d vw = _mm_set1_pd(w);
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m128 v = _mm_loadu_ps(x + i);
        __m128d lo = _mm_mul_pd(_mm_cvtps_pd(v), vw);
        __m128d hi = _mm_mul_pd(_mm_cvtps_pd(_mm_movehl_ps(v, v)), vw);
        _mm_storeu_pd(acc + i, _mm_add_pd(_mm_loadu_pd(acc + i), lo));
        _mm_storeu_pd(acc + i + 2, _mm_add_pd(_mm_loadu_pd(acc + i + 2), hi));
    }
    for (; i < n; i++)
        acc[i] += w * (double)x[i];
}
#define AXPY_F axpy_f_sse2
#else
#define AXPY_F axpy_f
#endif
KERNELS(double, d)

static PyObject *
fs_axpy(PyObject *self, PyObject *args)
{
    PyObject *acc_o, *x_o;
    double w;
    Py_buffer acc, x;
    if (!PyArg_ParseTuple(args, "OOd:axpy", &acc_o, &x_o, &w) || get_f64(acc_o, &acc, 1, "axpy", "acc") < 0)
        return NULL;
    char t = get_vec(x_o, &x, 0, "axpy", "x");
    if (!t) {
        PyBuffer_Release(&acc);
        return NULL;
    }
    Py_ssize_t n = count(&acc);
    if (count(&x) != n) {
        PyErr_Format(PyExc_ValueError, "axpy: acc has %zd elements but x has %zd", n, count(&x));
    } else {
        Py_BEGIN_ALLOW_THREADS
        if (t == 'f')
            AXPY_F(acc.buf, x.buf, n, w);
        else
            axpy_d(acc.buf, x.buf, n, w);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&acc);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
fs_dist2(PyObject *self, PyObject *args)
{
    PyObject *acc_o, *x_o;
    double inv, s = 0.0;
    Py_buffer acc, x;
    if (!PyArg_ParseTuple(args, "OOd:dist2", &acc_o, &x_o, &inv) || get_f64(acc_o, &acc, 0, "dist2", "acc") < 0)
        return NULL;
    char t = get_vec(x_o, &x, 0, "dist2", "x");
    if (!t) {
        PyBuffer_Release(&acc);
        return NULL;
    }
    Py_ssize_t n = count(&acc);
    if (count(&x) != n) {
        PyErr_Format(PyExc_ValueError, "dist2: acc has %zd elements but x has %zd", n, count(&x));
    } else {
        Py_BEGIN_ALLOW_THREADS
        s = t == 'f' ? dist2_f(acc.buf, x.buf, n, inv) : dist2_d(acc.buf, x.buf, n, inv);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&acc);
    if (PyErr_Occurred())
        return NULL;
    return PyFloat_FromDouble(s);
}

static PyObject *
fs_sumsq(PyObject *self, PyObject *x_o)
{
    Py_buffer x;
    double s;
    char t = get_vec(x_o, &x, 0, "sumsq", "x");
    if (!t)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    s = t == 'f' ? sumsq_f(x.buf, count(&x)) : sumsq_d(x.buf, count(&x));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    return PyFloat_FromDouble(s);
}

static PyObject *
fs_all_finite(PyObject *self, PyObject *x_o)
{
    Py_buffer x;
    int ok;
    char t = get_vec(x_o, &x, 0, "all_finite", "x");
    if (!t)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = t == 'f' ? all_finite_f(x.buf, count(&x)) : all_finite_d(x.buf, count(&x));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    return PyBool_FromLong(ok);
}

/* In place over one buffer, so no restrict: output i ends at byte
 * dst + (i+1)*size <= 8*(src+i) + 8 (dst <= 8*src, size <= 8), i.e. it can only
 * cover input i itself or inputs already read, and input i is loaded into a
 * local before output i is stored. memcpy because the output is neither
 * double-typed nor necessarily aligned. */
static void
narrow_f(char *base, Py_ssize_t src, Py_ssize_t n, Py_ssize_t dst, double wsum)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, base + 8 * (src + i), sizeof v);
        float f = (float)(v / wsum);
        memcpy(base + dst + i * (Py_ssize_t)sizeof f, &f, sizeof f);
    }
}

static void
narrow_d(char *base, Py_ssize_t src, Py_ssize_t n, Py_ssize_t dst, double wsum)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, base + 8 * (src + i), sizeof v);
        v /= wsum;
        memcpy(base + dst + i * (Py_ssize_t)sizeof v, &v, sizeof v);
    }
}

static PyObject *
fs_divide_narrow(PyObject *self, PyObject *args)
{
    PyObject *buf_o;
    Py_ssize_t src, n, dst;
    int code;
    double wsum;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "OnnnCd:divide_narrow", &buf_o, &src, &n, &dst, &code, &wsum))
        return NULL;
    if (code != 'f' && code != 'd') {
        PyErr_Format(PyExc_TypeError, "divide_narrow: code must be 'f' or 'd', not '%c'", code);
        return NULL;
    }
    if (get_f64(buf_o, &buf, 1, "divide_narrow", "buf") < 0)
        return NULL;
    Py_ssize_t len = count(&buf);
    /* Ordered so that nothing overflows (8*src <= 8*len = buf.len). Together
     * they imply dst + n*size <= 8*(src+n) <= 8*len: the outputs fit in buf. */
    if (src < 0 || n < 0 || n > len - src)
        PyErr_Format(PyExc_ValueError, "divide_narrow: elements [%zd, %zd+%zd) are outside buf (%zd elements)",
                     src, src, n, len);
    else if (dst < 0 || dst > 8 * src)
        PyErr_Format(PyExc_ValueError, "divide_narrow: dst_byte %zd must be in [0, 8*src = %zd]",
                     dst, 8 * src);
    else {
        Py_BEGIN_ALLOW_THREADS
        if (code == 'f')
            narrow_f(buf.buf, src, n, dst, wsum);
        else
            narrow_d(buf.buf, src, n, dst, wsum);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&buf);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"axpy", fs_axpy, METH_VARARGS, "axpy(acc, x, w): acc[i] += w * x[i], acc float64, x float32 or float64."},
    {"dist2", fs_dist2, METH_VARARGS, "dist2(acc, x, inv) -> float: sum of (x[i] - acc[i]*inv)**2 in float64."},
    {"sumsq", fs_sumsq, METH_O, "sumsq(x) -> float: sum of x[i]**2 in float64."},
    {"all_finite", fs_all_finite, METH_O, "all_finite(x) -> bool: no NaN or infinity in x."},
    {"divide_narrow", fs_divide_narrow, METH_VARARGS,
     "divide_narrow(buf, src, n, dst_byte, code, wsum): write buf[src:src+n] / wsum as code "
     "('f' or 'd') from byte dst_byte of buf, in place; needs dst_byte <= 8*src."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastsum",
    .m_doc = "Float64 accumulation kernels for edgepack.federated (see _kernels.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__fastsum(void)
{
    return PyModule_Create(&module);
}
