/*
 * udptime._sendstep: the last step of an NTP reply's way out, compiled.
 *
 * One call reads the system clock (CLOCK_REALTIME), writes the reply's
 * transmit timestamp exactly as udptime.ntp.LateTransmit.stamp does for a
 * reply built with reply constants (half steps of the clock's precision,
 * the offset from 1900 in those steps, the random bits below the
 * precision, never before the receive timestamp, wrapped into its NTP
 * era), packs the 48-byte reply from the parts LateTransmit holds, and
 * hands it to the kernel with sendto (sendmsg when it carries control
 * messages): all with the interpreter's lock released, so that nothing but
 * a few arithmetic instructions comes between the clock's reading and the
 * system call.
 *
 * The module is optional: udptime.sendstep says whether it was built, and
 * the server sends with the Python step without it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define HEADER_SIZE 48
#define NTP_UNIX_OFFSET 2208988800LL
#define ERA_SECONDS 4294967296LL
#define CONTROL_ROOM 512

typedef __int128 wide;

static const wide MASK_64 = (((wide)1) << 64) - 1;

/* What a reply is made of, but for its transmit timestamp. */
typedef struct {
    const unsigned char *start;  /* the first 24 bytes */
    const unsigned char *origin; /* 8 bytes */
    wide receive;                /* before its era is wrapped */
    wide fuzz;                   /* random bits below the precision, less half a step */
    int bits;                    /* how many low bits are below the precision */
    double halfStepsPerSecond;
    wide offsetUnits;
} Parts;

/* A Python int as a 128-bit one (the receive timestamp passes 2^64 in NTP
   era 1, from 2036 on). */
static int
toWide(PyObject *value, wide *out)
{
    int overflow = 0;
    long long small;
    PyObject *high;
    long long highPart;
    unsigned long long lowPart;

    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "an int is needed");
        return -1;
    }
    small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (!overflow) {
        if (small == -1 && PyErr_Occurred())
            return -1;
        *out = small;
        return 0;
    }
    if (overflow > 0) {
        /* An NTP timestamp of this era (from 1968 on, past 2^63). */
        unsigned long long unsignedValue = PyLong_AsUnsignedLongLong(value);
        if (!(unsignedValue == (unsigned long long)-1 && PyErr_Occurred())) {
            *out = (wide)unsignedValue;
            return 0;
        }
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    {
        PyObject *shift = PyLong_FromLong(64);
        if (shift == NULL)
            return -1;
        high = PyNumber_Rshift(value, shift);
        Py_DECREF(shift);
    }
    if (high == NULL)
        return -1;
    highPart = PyLong_AsLongLong(high);
    Py_DECREF(high);
    if (highPart == -1 && PyErr_Occurred())
        return -1;
    lowPart = PyLong_AsUnsignedLongLongMask(value);
    if (lowPart == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (wide)(((unsigned __int128)highPart << 64) | lowPart);
    return 0;
}

/* A Python int from a 128-bit one. */
static PyObject *
fromWide(wide value)
{
    PyObject *high, *shift, *shifted, *low, *result;

    if (value >= LLONG_MIN && value <= LLONG_MAX)
        return PyLong_FromLongLong((long long)value);
    high = PyLong_FromLongLong((long long)(value >> 64));
    if (high == NULL)
        return NULL;
    shift = PyLong_FromLong(64);
    if (shift == NULL) {
        Py_DECREF(high);
        return NULL;
    }
    shifted = PyNumber_Lshift(high, shift);
    Py_DECREF(high);
    Py_DECREF(shift);
    if (shifted == NULL)
        return NULL;
    low = PyLong_FromUnsignedLongLong((unsigned long long)(value & MASK_64));
    if (low == NULL) {
        Py_DECREF(shifted);
        return NULL;
    }
    result = PyNumber_Or(shifted, low);
    Py_DECREF(shifted);
    Py_DECREF(low);
    return result;
}

/* The Unix time of a timespec, as the float time.time() gives for it
   (CPython's _PyTime_AsSecondsDouble). */
static double
timespecSeconds(long long seconds, long long nanoseconds)
{
    volatile double d;
    long long t = seconds * 1000000000LL + nanoseconds;

    if (t % 1000000000LL == 0) {
        d = (double)(t / 1000000000LL);
    }
    else {
        d = (double)t;
        d /= 1e9;
    }
    return d;
}

/* udptime.clock.unixToNTP64: the 64-bit NTP timestamp of a Unix time,
   modulo one era. */
static unsigned long long
unixToNTP64(double unixTime)
{
    double whole = floor(unixTime);
    double scaled = (unixTime - whole) * 4294967296.0;
    long long fraction = (long long)scaled;
    long long seconds;

    if (fraction >= 4294967296LL)
        fraction = 4294967295LL;
    seconds = ((long long)whole + NTP_UNIX_OFFSET) % ERA_SECONDS;
    if (seconds < 0)
        seconds += ERA_SECONDS;
    return ((unsigned long long)seconds << 32) | (unsigned long long)fraction;
}

static void
putTimestamp(unsigned char *at, unsigned long long value)
{
    int i;
    for (i = 7; i >= 0; i--) {
        at[i] = (unsigned char)(value & 0xFF);
        value >>= 8;
    }
}

/* LateTransmit.stamp, for a reply with reply constants, the transmit time
   being transmit: the 48 bytes of the reply into reply. */
static void
stampReply(const Parts *parts, double transmit, unsigned char *reply)
{
    wide send, receive = parts->receive;
    int bits = parts->bits;

    if (transmit >= 0.0) {
        send = ((((wide)(transmit * parts->halfStepsPerSecond)) + 1) >> 1)
               + parts->offsetUnits;
        send = send * (((wide)1) << bits) + parts->fuzz;
        if (send < receive)
            send = receive;
        send &= MASK_64;
        receive &= MASK_64;
    }
    else {
        wide half = ((wide)1 << bits) >> 1;
        long long difference;
        send = (wide)unixToNTP64(transmit) + half;
        send = ((send >> bits) << bits) + parts->fuzz;
        send &= MASK_64;
        receive &= MASK_64;
        difference = (long long)(unsigned long long)(send - receive);
        if (difference < 0)
            send = receive;
    }
    memcpy(reply, parts->start, 24);
    memcpy(reply + 24, parts->origin, 8);
    putTimestamp(reply + 32, (unsigned long long)receive);
    putTimestamp(reply + 40, (unsigned long long)send);
}

/* The parts of a reply from the arguments start, origin, receive, fuzz,
   fuzzBits, halfStepsPerSecond, offsetUnits; the buffers of start and
   origin are released by releaseParts. */
static int
takeParts(PyObject *const *args, Parts *parts)
{
    PyObject *start = args[0], *origin = args[1];
    long bits;

    if (!PyBytes_CheckExact(start) || PyBytes_GET_SIZE(start) != 24) {
        PyErr_SetString(PyExc_ValueError, "start: 24 bytes are needed");
        return -1;
    }
    if (!PyBytes_CheckExact(origin) || PyBytes_GET_SIZE(origin) != 8) {
        PyErr_SetString(PyExc_ValueError, "origin: 8 bytes are needed");
        return -1;
    }
    parts->start = (const unsigned char *)PyBytes_AS_STRING(start);
    parts->origin = (const unsigned char *)PyBytes_AS_STRING(origin);
    if (toWide(args[2], &parts->receive) < 0)
        return -1;
    if (toWide(args[3], &parts->fuzz) < 0)
        return -1;
    bits = PyLong_AsLong(args[4]);
    if (bits == -1 && PyErr_Occurred())
        return -1;
    if (bits < 0 || bits > 32) {
        PyErr_SetString(PyExc_ValueError, "fuzzBits: 0 to 32");
        return -1;
    }
    parts->bits = (int)bits;
    parts->halfStepsPerSecond = PyFloat_AsDouble(args[5]);
    if (parts->halfStepsPerSecond == -1.0 && PyErr_Occurred())
        return -1;
    if (toWide(args[6], &parts->offsetUnits) < 0)
        return -1;
    return 0;
}

PyDoc_STRVAR(stamp_doc,
"stamp(start, origin, receive, fuzz, fuzzBits, halfStepsPerSecond,\n"
"      offsetUnits, transmit) -> bytes\n"
"\n"
"The 48-byte reply the send step sends for the transmit time `transmit`\n"
"(Unix seconds, a float): what LateTransmit.stamp returns for a reply with\n"
"reply constants whose parts these are, its clock reading `transmit`.");

static PyObject *
sendstep_stamp(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Parts parts;
    double transmit;
    unsigned char reply[HEADER_SIZE];

    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "stamp() takes 8 arguments");
        return NULL;
    }
    if (takeParts(args, &parts) < 0)
        return NULL;
    transmit = PyFloat_AsDouble(args[7]);
    if (transmit == -1.0 && PyErr_Occurred())
        return NULL;
    stampReply(&parts, transmit, reply);
    return PyBytes_FromStringAndSize((const char *)reply, HEADER_SIZE);
}

PyDoc_STRVAR(seconds_doc,
"seconds(seconds, nanoseconds) -> float\n"
"\n"
"The Unix time of a clock reading (a struct timespec) as the send step\n"
"converts it: the float time.time() gives for that reading.");

static PyObject *
sendstep_seconds(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    long long seconds, nanoseconds;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "seconds() takes 2 arguments");
        return NULL;
    }
    seconds = PyLong_AsLongLong(args[0]);
    if (seconds == -1 && PyErr_Occurred())
        return NULL;
    nanoseconds = PyLong_AsLongLong(args[1]);
    if (nanoseconds == -1 && PyErr_Occurred())
        return NULL;
    if (nanoseconds < 0 || nanoseconds >= 1000000000LL
        || seconds > 9000000000LL || seconds < -9000000000LL) {
        PyErr_SetString(PyExc_ValueError, "not a clock reading");
        return NULL;
    }
    return PyFloat_FromDouble(timespecSeconds(seconds, nanoseconds));
}

PyDoc_STRVAR(roundTrip_doc,
"wide(value) -> int\n"
"\n"
"`value` through the module's 128-bit integers and back (for tests).");

static PyObject *
sendstep_wide(PyObject *Py_UNUSED(module), PyObject *value)
{
    wide converted;
    if (toWide(value, &converted) < 0)
        return NULL;
    return fromWide(converted);
}

/* The sender: one socket's send step. */

typedef struct {
    PyObject_HEAD
    int fd;
    int family;
    PyObject *lastAddress; /* the address tuple the cached sockaddr is of */
    struct sockaddr_storage address;
    socklen_t addressLength;
} SendStep;

static int
SendStep_init(SendStep *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"fd", "family", NULL};
    int fd, family;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ii", keywords, &fd, &family))
        return -1;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "an AF_INET or AF_INET6 socket is needed");
        return -1;
    }
    self->fd = fd;
    self->family = family;
    Py_CLEAR(self->lastAddress);
    self->addressLength = 0;
    return 0;
}

static void
SendStep_dealloc(SendStep *self)
{
    PyTypeObject *type = Py_TYPE(self);
    Py_CLEAR(self->lastAddress);
    type->tp_free((PyObject *)self);
}

/* The sockaddr of the address tuple (host, port[, flowinfo, scope_id]),
   host a numeric address of the socket's family (as the kernel reports a
   datagram's source): 0; 1 for a host that is not (a name, an IPv6
   address with a zone, an address of the other family), which the
   Python step sends to; -1 with an exception set for a tuple that is no
   address. */
static int
setAddress(SendStep *self, PyObject *address)
{
    PyObject *host, *port;
    const char *text;
    long number;

    if (address == self->lastAddress)
        return 0;
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "an address tuple (host, port) is needed");
        return -1;
    }
    host = PyTuple_GET_ITEM(address, 0);
    port = PyTuple_GET_ITEM(address, 1);
    if (!PyUnicode_Check(host)) {
        PyErr_SetString(PyExc_TypeError, "the host must be a str");
        return -1;
    }
    text = PyUnicode_AsUTF8(host);
    if (text == NULL)
        return -1;
    number = PyLong_AsLong(port);
    if (number == -1 && PyErr_Occurred())
        return -1;
    if (number < 0 || number > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    /* Rewritten now: the cache holds no address until it holds this one. */
    Py_CLEAR(self->lastAddress);
    memset(&self->address, 0, sizeof(self->address));
    if (self->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&self->address;
        in->sin_family = AF_INET;
        in->sin_port = htons((unsigned short)number);
        if (inet_pton(AF_INET, text, &in->sin_addr) != 1) {
            return 1;
        }
        self->addressLength = sizeof(*in);
    }
    else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&self->address;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)number);
        if (inet_pton(AF_INET6, text, &in6->sin6_addr) != 1) {
            return 1;
        }
        if (PyTuple_GET_SIZE(address) > 2) {
            unsigned long flowinfo = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(address, 2));
            if (flowinfo == (unsigned long)-1 && PyErr_Occurred())
                return -1;
            in6->sin6_flowinfo = htonl((uint32_t)flowinfo);
        }
        if (PyTuple_GET_SIZE(address) > 3) {
            unsigned long scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(address, 3));
            if (scope == (unsigned long)-1 && PyErr_Occurred())
                return -1;
            in6->sin6_scope_id = (uint32_t)scope;
        }
        self->addressLength = sizeof(*in6);
    }
    Py_INCREF(address);
    Py_XSETREF(self->lastAddress, address);
    return 0;
}

/* The control messages of ancillary, a sequence of (level, type, data),
   into control: their length, or -1 with an exception set. */
static Py_ssize_t
packControl(PyObject *ancillary, unsigned char *control, size_t room)
{
    PyObject *items = PySequence_Fast(ancillary, "ancillary data must be a sequence");
    Py_ssize_t count, i;
    size_t used = 0;
    struct msghdr message;
    struct cmsghdr *header;

    if (items == NULL)
        return -1;
    count = PySequence_Fast_GET_SIZE(items);
    memset(control, 0, room);
    memset(&message, 0, sizeof(message));
    message.msg_control = control;
    message.msg_controllen = room;
    header = NULL;
    for (i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(items, i);
        int level, type;
        Py_buffer data;
        size_t space;

        if (!PyArg_ParseTuple(item, "iiy*:ancillary", &level, &type, &data)) {
            Py_DECREF(items);
            return -1;
        }
        space = CMSG_SPACE((size_t)data.len);
        if (used + space > room) {
            PyBuffer_Release(&data);
            Py_DECREF(items);
            PyErr_SetString(PyExc_ValueError, "too much ancillary data");
            return -1;
        }
        header = (struct cmsghdr *)(control + used);
        header->cmsg_level = level;
        header->cmsg_type = type;
        header->cmsg_len = CMSG_LEN((size_t)data.len);
        memcpy(CMSG_DATA(header), data.buf, (size_t)data.len);
        used += space;
        PyBuffer_Release(&data);
    }
    Py_DECREF(items);
    return (Py_ssize_t)used;
}

PyDoc_STRVAR(send_doc,
"send(start, origin, receive, fuzz, fuzzBits, halfStepsPerSecond,\n"
"     offsetUnits, address, ancillary) -> int\n"
"\n"
"Read the system clock, stamp the reply made of these parts with it (see\n"
"stamp) and send it to `address` (sendto; sendmsg with the control\n"
"messages `ancillary` when it is not None), the interpreter's lock\n"
"released: the bytes sent (48), or the negated errno of a failed send;\n"
"None, nothing sent, for an address it does not convert (not numeric, an\n"
"IPv6 zone, the other family), which the Python step then sends to.");

static PyObject *
SendStep_send(SendStep *self, PyObject *const *args, Py_ssize_t nargs)
{
    Parts parts;
    PyObject *ancillary;
    unsigned char reply[HEADER_SIZE];
    unsigned char control[CONTROL_ROOM] __attribute__((aligned(8)));
    Py_ssize_t controlLength = 0;
    ssize_t sent;
    int failure = 0;
    struct timespec now;
    struct sockaddr_storage address;
    socklen_t addressLength;

    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "send() takes 9 arguments");
        return NULL;
    }
    if (takeParts(args, &parts) < 0)
        return NULL;
    switch (setAddress(self, args[7])) {
    case 0:
        break;
    case 1:
        Py_RETURN_NONE;
    default:
        return NULL;
    }
    /* A copy, for the send: the step's cache may change once the lock is
       released. */
    addressLength = self->addressLength;
    memcpy(&address, &self->address, addressLength);
    ancillary = args[8];
    if (ancillary != Py_None) {
        controlLength = packControl(ancillary, control, sizeof(control));
        if (controlLength < 0)
            return NULL;
    }

    Py_BEGIN_ALLOW_THREADS
    clock_gettime(CLOCK_REALTIME, &now);
    stampReply(&parts, timespecSeconds(now.tv_sec, now.tv_nsec), reply);
    if (controlLength == 0) {
        sent = sendto(self->fd, reply, HEADER_SIZE, 0,
                      (struct sockaddr *)&address, addressLength);
    }
    else {
        struct iovec piece;
        struct msghdr message;
        piece.iov_base = reply;
        piece.iov_len = HEADER_SIZE;
        memset(&message, 0, sizeof(message));
        message.msg_name = &address;
        message.msg_namelen = addressLength;
        message.msg_iov = &piece;
        message.msg_iovlen = 1;
        message.msg_control = control;
        message.msg_controllen = (size_t)controlLength;
        sent = sendmsg(self->fd, &message, 0);
    }
    if (sent < 0)
        failure = errno;
    Py_END_ALLOW_THREADS

    if (sent < 0)
        return PyLong_FromLong(-(long)failure);
    return PyLong_FromSsize_t(sent);
}

static PyMethodDef SendStep_methods[] = {
    {"send", (PyCFunction)(void (*)(void))SendStep_send, METH_FASTCALL, send_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef SendStep_members[] = {
    {"fd", T_INT, offsetof(SendStep, fd), READONLY, "The socket's descriptor."},
    {"family", T_INT, offsetof(SendStep, family), READONLY, "The socket's family."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(SendStep_doc,
"SendStep(fd, family)\n"
"\n"
"The send step of NTP replies on the UDP socket `fd` of `family`\n"
"(AF_INET, AF_INET6), which the caller keeps open while it is used.");

static PyTypeObject SendStepType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "udptime._sendstep.SendStep",
    .tp_basicsize = sizeof(SendStep),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = SendStep_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SendStep_init,
    .tp_dealloc = (destructor)SendStep_dealloc,
    .tp_methods = SendStep_methods,
    .tp_members = SendStep_members,
};

static PyMethodDef module_methods[] = {
    {"stamp", (PyCFunction)(void (*)(void))sendstep_stamp, METH_FASTCALL, stamp_doc},
    {"seconds", (PyCFunction)(void (*)(void))sendstep_seconds, METH_FASTCALL,
     seconds_doc},
    {"wide", (PyCFunction)sendstep_wide, METH_O, roundTrip_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "udptime._sendstep",
    .m_doc = "The compiled send step of NTP replies (see udptime.sendstep).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__sendstep(void)
{
    PyObject *created;

    if (PyType_Ready(&SendStepType) < 0)
        return NULL;
    created = PyModule_Create(&module);
    if (created == NULL)
        return NULL;
    Py_INCREF(&SendStepType);
    if (PyModule_AddObject(created, "SendStep", (PyObject *)&SendStepType) < 0) {
        Py_DECREF(&SendStepType);
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
