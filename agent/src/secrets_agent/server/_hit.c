/* The compiled twin of secrets_agent.server.hit.Hit: the same reads answered with the same
 * bytes, counts and cache effects, without the interpreter's frames (see hit.py). It declines
 * (0) whatever it is not sure of before it has any effect; hit.py's code then answers.
 *
 * It reads the objects hit.Hit names at construction, and per request the attributes
 * Reads.plain, SecretService.cached, SecretCache.fresh, Metrics.served / answered and
 * Renderer.parts read: tests/agent/server/test_hit.py runs both on every case. A request it
 * answered is remembered as one record (RecordObject), which answers the same bytes again
 * without the parsed head, the read, the key's lookup in the cache or any other entry.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "_aes.h"

enum { PASS = 0, KEEP = 1, CLOSE = 2 };

#define FERNET_HEAD 9 /* version (1) + timestamp (8); the IV follows */
#define FERNET_MAC 32
#define BLOCK 16

static PyObject *s_young, *s_read, *s_keep_alive, *s_kind_label, *s_policy, *s_access,
    *s_service, *s_allowed_by, *s_rules, *s_rules_of, *s_memo, *s_rules_memo, *s_invalid, *s_forced, *s_key,
    *s_prefix, *s_kind, *s_enabled, *s_cache, *s_entries, *s_clock, *s_cipher,
    *s_loop_decryptor, *s_loop_aes_key, *s_token, *s_stored_at, *s_expires_at, *s_source, *s_refresh_at,
    *s_update, *s_write, *s_pending, *s_counts, *s_sums, *s_bounds,
    *s_spared_at, *s_size, *s_current, *s_runtime, *s_audit, *s_tally, *s_histogram, *s_wall, *s_heads,
    *s_not_found, *s_read_counters, *s_avoided_counter, *s_used, *s_gone, *s_request;
static PyObject *one; /* the int 1 */
static PyObject *monotonic, *wall_time; /* time.monotonic and time.time: read here directly */
/* Whether a hit may decrypt with the CPU's AES instructions (_aes.h) where they are at hand;
 * ``native_aes(False)`` keeps every Hit on its CipherContext (the tests run both ways). */
static int native_allowed = 1;

/* Counts kept here between reads of the metrics (``drain`` hands them to the Tally and the
 * histogram): an increment is a C add on this object's own memory, where the dicts' updates
 * touched a dozen objects a hit and allocated five. */
#define TALLY_CHILDREN 16 /* counter children: a few per kind and backend */
#define TALLY_KINDS 4     /* request kinds: variable, connection, config */
#define TALLY_BUCKETS 32  /* the latency histogram's bounds, at most */

typedef struct {
    PyObject *child; /* a counter child (NULL: a free slot) */
    long long count;
} ChildCount;

typedef struct {
    PyObject *label;    /* a kind label (NULL: a free slot) */
    PyObject *counters; /* Metrics.read_counters(label): answered 200/404, served hit/negative */
    long long buckets[TALLY_BUCKETS + 1];
    double seconds;
    int observed; /* buckets or seconds to hand over */
} KindCount;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall; /* calls skip argument tuples */
    PyObject *weakreflist;     /* the Tally attaches this Hit weakly */
    PyObject *reference; /* the hit.Hit this twins */
    PyObject *memo, *current, *audit, *tally, *histogram, *wall;
    /* ``current``'s ``runtime`` slot, read instead of calling it (context.Current), or -1 */
    Py_ssize_t current_slot;
    PyObject *hit_head, *negative_head, *not_found;
    PyObject *read_counters, *avoided_counter;
    PyObject *bounds;  /* the histogram's bucket bounds: a tuple of floats */
    PyObject *kinds;   /* kind label -> hit.Metrics.read_counters(kind) */
    PyObject *sources; /* backend -> its avoided counter */
    /* The runtime last served by, and its parts (a Runtime is frozen; a reload makes another). */
    PyObject *runtime, *policy, *access, *service;
    /* The histogram's dicts (it never replaces them). */
    PyObject *counts_by_kind, *sums;
    /* The cache last read from, and its parts (a reload may bring another). */
    PyObject *cache, *entries, *clock, *decryptor;
    /* The same key's schedule for _aes.h, when the CPU has the instructions and the cipher
     * gave its key (``aes_ready``); wiped with the Hit. */
    AesKeys aes;
    int aes_ready;
    /* The backends each known miss spares (SecretService.spared_at), per service: two
     * generations of ``half`` entries each, as server/memo.py's Generations. */
    PyObject *names_of, *names_young, *names_old;
    /* Requests answered here (bytes -> Record), under this runtime and cache: two
     * generations of ``half`` each. */
    PyObject *records_young, *records_old;
    Py_ssize_t half;
    ChildCount children[TALLY_CHILDREN];
    KindCount kinds_counted[TALLY_KINDS];
    double bounds_c[TALLY_BUCKETS]; /* the histogram's bounds as C doubles */
    Py_ssize_t bounds_size;         /* how many; -1: too many to keep here (the dicts' path) */
    long long second;
    char date[64];
    Py_ssize_t date_size;
} HitObject;

static PyObject *Hit_vectorcall(PyObject *, PyObject *const *, size_t, PyObject *);
static int read_clock(PyObject *, double *);
static int forget_records(HitObject *);
static Py_ssize_t runtime_slot(PyTypeObject *);

static const char *DAYS[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *MONTHS[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char HEX[] = "0123456789abcdef";

static int
Hit_traverse(HitObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->reference);
    Py_VISIT(self->memo);
    Py_VISIT(self->current);
    Py_VISIT(self->audit);
    Py_VISIT(self->tally);
    Py_VISIT(self->histogram);
    Py_VISIT(self->wall);
    Py_VISIT(self->not_found);
    Py_VISIT(self->read_counters);
    Py_VISIT(self->avoided_counter);
    Py_VISIT(self->kinds);
    Py_VISIT(self->sources);
    Py_VISIT(self->cache);
    Py_VISIT(self->entries);
    Py_VISIT(self->clock);
    Py_VISIT(self->decryptor);
    Py_VISIT(self->names_of);
    Py_VISIT(self->runtime);
    Py_VISIT(self->policy);
    Py_VISIT(self->access);
    Py_VISIT(self->service);
    Py_VISIT(self->counts_by_kind);
    Py_VISIT(self->sums);
    Py_VISIT(self->names_young);
    Py_VISIT(self->names_old);
    Py_VISIT(self->records_young);
    Py_VISIT(self->records_old);
    for (int i = 0; i < TALLY_CHILDREN; i++)
        Py_VISIT(self->children[i].child);
    for (int i = 0; i < TALLY_KINDS; i++) {
        Py_VISIT(self->kinds_counted[i].label);
        Py_VISIT(self->kinds_counted[i].counters);
    }
    return 0;
}

static int
Hit_clear(HitObject *self)
{
    for (int i = 0; i < TALLY_CHILDREN; i++) {
        Py_CLEAR(self->children[i].child);
        self->children[i].count = 0;
    }
    for (int i = 0; i < TALLY_KINDS; i++) {
        Py_CLEAR(self->kinds_counted[i].label);
        Py_CLEAR(self->kinds_counted[i].counters);
        memset(self->kinds_counted[i].buckets, 0, sizeof self->kinds_counted[i].buckets);
        self->kinds_counted[i].seconds = 0.0;
        self->kinds_counted[i].observed = 0;
    }
    Py_CLEAR(self->reference);
    Py_CLEAR(self->memo);
    Py_CLEAR(self->current);
    self->current_slot = -1;
    Py_CLEAR(self->audit);
    Py_CLEAR(self->tally);
    Py_CLEAR(self->histogram);
    Py_CLEAR(self->wall);
    Py_CLEAR(self->hit_head);
    Py_CLEAR(self->negative_head);
    Py_CLEAR(self->not_found);
    Py_CLEAR(self->read_counters);
    Py_CLEAR(self->avoided_counter);
    Py_CLEAR(self->bounds);
    Py_CLEAR(self->kinds);
    Py_CLEAR(self->sources);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->entries);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->decryptor);
    aes_wipe(&self->aes, sizeof self->aes);
    self->aes_ready = 0;
    Py_CLEAR(self->names_of);
    Py_CLEAR(self->runtime);
    Py_CLEAR(self->policy);
    Py_CLEAR(self->access);
    Py_CLEAR(self->service);
    Py_CLEAR(self->counts_by_kind);
    Py_CLEAR(self->sums);
    Py_CLEAR(self->names_young);
    Py_CLEAR(self->names_old);
    Py_CLEAR(self->records_young);
    Py_CLEAR(self->records_old);
    return 0;
}

static PyObject *Hit_drain(HitObject *, PyObject *);

/* Counts still kept here go to the metrics before the Hit does (a reload or a stop). */
static void
Hit_finalize(HitObject *self)
{
    PyObject *type, *value, *traceback, *result;
    if (self->tally == NULL)
        return;
    PyErr_Fetch(&type, &value, &traceback);
    result = Hit_drain(self, NULL);
    if (result == NULL)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(result);
    PyErr_Restore(type, value, traceback);
}

static void
Hit_dealloc(HitObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    Hit_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Hit_init(HitObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *reference, *heads = NULL;
    if (!PyArg_ParseTuple(args, "O:Hit", &reference))
        return -1;
    if (self->tally != NULL) { /* initialised before: the counts kept so far go over first */
        PyObject *drained = Hit_drain(self, NULL);
        if (drained == NULL)
            return -1;
        Py_DECREF(drained);
    }
    Hit_clear(self);
    self->reference = Py_NewRef(reference);
#define TAKE(field, name)                                                  \
    if ((self->field = PyObject_GetAttr(reference, name)) == NULL) goto fail;
    TAKE(memo, s_memo)
    TAKE(current, s_current)
    TAKE(audit, s_audit)
    TAKE(tally, s_tally)
    TAKE(histogram, s_histogram)
    TAKE(wall, s_wall)
    TAKE(not_found, s_not_found)
    TAKE(read_counters, s_read_counters)
    TAKE(avoided_counter, s_avoided_counter)
#undef TAKE
    self->current_slot = runtime_slot(Py_TYPE(self->current));
    if ((self->bounds = PyObject_GetAttr(self->histogram, s_bounds)) == NULL ||
        (self->counts_by_kind = PyObject_GetAttr(self->histogram, s_counts)) == NULL ||
        (self->sums = PyObject_GetAttr(self->histogram, s_sums)) == NULL)
        goto fail;
    if (!PyTuple_Check(self->bounds) || !PyDict_Check(self->not_found) ||
        !PyDict_Check(self->counts_by_kind) || !PyDict_Check(self->sums)) {
        PyErr_SetString(PyExc_TypeError, "Hit: unexpected bounds or 404 bodies");
        goto fail;
    }
    self->bounds_size = PyTuple_GET_SIZE(self->bounds) <= TALLY_BUCKETS ? PyTuple_GET_SIZE(self->bounds) : -1;
    for (Py_ssize_t i = 0; i < self->bounds_size; i++) {
        self->bounds_c[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(self->bounds, i));
        if (self->bounds_c[i] == -1.0 && PyErr_Occurred()) goto fail;
    }
    if ((heads = PyObject_GetAttr(reference, s_heads)) == NULL)
        goto fail;
    if (!PyTuple_Check(heads) ||
        PyTuple_GET_SIZE(heads) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(heads, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(heads, 1))) {
        PyErr_SetString(PyExc_TypeError, "Hit: unexpected heads");
        goto fail;
    }
    self->hit_head = Py_NewRef(PyTuple_GET_ITEM(heads, 0));
    self->negative_head = Py_NewRef(PyTuple_GET_ITEM(heads, 1));
    if ((self->kinds = PyDict_New()) == NULL || (self->sources = PyDict_New()) == NULL ||
        forget_records(self) < 0)
        goto fail;
    {
        PyObject *size = PyObject_GetAttr(reference, s_size);
        if (size == NULL) goto fail;
        self->half = PyLong_AsSsize_t(size) / 2;
        Py_DECREF(size);
        if (self->half == -1 && PyErr_Occurred()) goto fail;
        if (self->half < 1) self->half = 1;
    }
    self->second = -1;
    self->vectorcall = Hit_vectorcall;
    Py_DECREF(heads);
    return 0;
fail:
    Py_XDECREF(heads);
    Hit_clear(self);
    return -1;
}

/* pending[child] += 1, as Tally.add does. */
static int
bump(PyObject *pending, PyObject *child)
{
    PyObject *count = PyDict_GetItemWithError(pending, child);
    PyObject *next;
    int failed;
    if (count == NULL) {
        if (PyErr_Occurred())
            return -1;
        return PyDict_SetItem(pending, child, one);
    }
    if ((next = PyNumber_Add(count, one)) == NULL)
        return -1;
    failed = PyDict_SetItem(pending, child, next);
    Py_DECREF(next);
    return failed;
}

/* LatencyHistogram.observe(kind, seconds). */
static int
observe(HitObject *self, PyObject *kind, double seconds)
{
    PyObject *counts, *sum, *count, *next, *total;
    Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(self->bounds), mid;
    int failed;
    counts = PyDict_GetItemWithError(self->counts_by_kind, kind);
    sum = counts == NULL ? NULL : PyDict_GetItemWithError(self->sums, kind);
    if (sum == NULL || !PyList_Check(counts) || PyList_GET_SIZE(counts) != hi + 1 ||
        !PyFloat_Check(sum)) {
        /* a first answer for this kind (or a shape this code does not know): the reference */
        PyObject *result;
        if (PyErr_Occurred())
            return -1;
        result = PyObject_CallMethod(self->histogram, "observe", "Od", kind, seconds);
        Py_XDECREF(result);
        return result == NULL ? -1 : 0;
    }
    while (lo < hi) { /* bisect.bisect_left */
        mid = (lo + hi) / 2;
        if (PyFloat_AsDouble(PyTuple_GET_ITEM(self->bounds, mid)) < seconds)
            lo = mid + 1;
        else
            hi = mid;
    }
    count = PyList_GET_ITEM(counts, lo);
    if ((next = PyNumber_Add(count, one)) == NULL)
        return -1;
    PyList_SetItem(counts, lo, next); /* steals next */
    if ((total = PyFloat_FromDouble(PyFloat_AS_DOUBLE(sum) + seconds)) == NULL)
        return -1;
    failed = PyDict_SetItem(self->sums, kind, total);
    Py_DECREF(total);
    return failed;
}

/* The JSON string of UTF-8 ``text`` as json's encode_basestring_ascii writes it (quotes
 * included) into ``out``, or its size when ``out`` is NULL; -1 if ``text`` is not UTF-8. */
static unsigned char PLAIN[256]; /* 1: a byte JSON's ASCII encoder copies as it is */

static Py_ssize_t
quote(const unsigned char *text, Py_ssize_t size, char *out)
{
    Py_ssize_t i = 0, n = 2, run;
    char *o = out;
    if (o) *o++ = '"';
    while (i < size) {
        unsigned int c, cp, extra;
        /* A run of bytes copied as they are, eight at a time where it can: most of a value. */
        run = i;
        while (i + 8 <= size &&
               (PLAIN[text[i]] & PLAIN[text[i + 1]] & PLAIN[text[i + 2]] & PLAIN[text[i + 3]] &
                PLAIN[text[i + 4]] & PLAIN[text[i + 5]] & PLAIN[text[i + 6]] & PLAIN[text[i + 7]]))
            i += 8;
        while (i < size && PLAIN[text[i]])
            i++;
        if (i > run) {
            n += i - run;
            if (o) {
                memcpy(o, text + run, i - run);
                o += i - run;
            }
            if (i == size)
                break;
        }
        c = text[i]; /* not a plain byte: an escape, or the start of a UTF-8 sequence */
        if (c < 0x80) {
            i++;
            char short_form = 0;
            switch (c) {
            case '"': short_form = '"'; break;
            case '\\': short_form = '\\'; break;
            case '\n': short_form = 'n'; break;
            case '\r': short_form = 'r'; break;
            case '\t': short_form = 't'; break;
            case '\b': short_form = 'b'; break;
            case '\f': short_form = 'f'; break;
            }
            if (short_form) {
                n += 2;
                if (o) { *o++ = '\\'; *o++ = short_form; }
                continue;
            }
            cp = c;
        } else {
            if (c >= 0xf0 && c <= 0xf4) { cp = c & 0x07; extra = 3; }
            else if (c >= 0xe0 && c <= 0xef) { cp = c & 0x0f; extra = 2; }
            else if (c >= 0xc2 && c < 0xe0) { cp = c & 0x1f; extra = 1; }
            else return -1;
            if (i + (Py_ssize_t)extra >= size)
                return -1; /* cut short */
            for (unsigned int k = 1; k <= extra; k++) {
                unsigned int b = text[i + k];
                if ((b & 0xc0) != 0x80) return -1;
                cp = (cp << 6) | (b & 0x3f);
            }
            if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
                (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)))
                return -1;
            i += extra + 1;
        }
        if (cp >= 0x10000) {
            unsigned int v = cp - 0x10000;
            unsigned int high = 0xd800 | (v >> 10), low = 0xdc00 | (v & 0x3ff);
            n += 12;
            if (o) {
                *o++ = '\\'; *o++ = 'u';
                *o++ = HEX[(high >> 12) & 0xf]; *o++ = HEX[(high >> 8) & 0xf];
                *o++ = HEX[(high >> 4) & 0xf]; *o++ = HEX[high & 0xf];
                *o++ = '\\'; *o++ = 'u';
                *o++ = HEX[(low >> 12) & 0xf]; *o++ = HEX[(low >> 8) & 0xf];
                *o++ = HEX[(low >> 4) & 0xf]; *o++ = HEX[low & 0xf];
            }
        } else {
            n += 6;
            if (o) {
                *o++ = '\\'; *o++ = 'u';
                *o++ = HEX[(cp >> 12) & 0xf]; *o++ = HEX[(cp >> 8) & 0xf];
                *o++ = HEX[(cp >> 4) & 0xf]; *o++ = HEX[cp & 0xf];
            }
        }
    }
    if (o) *o++ = '"';
    return n;
}

/* An attribute read at one place in this file: straight from its ``__slots__`` slot once the
 * type there is known (what CPython's own code for the attribute would read, less the lookup);
 * any other type, or an attribute that is not a slot, goes through PyObject_GetAttr. */
typedef struct {
    PyObject **name;    /* the interned name (set at module init) */
    PyTypeObject *type; /* the first type seen here (NULL: none yet) */
    Py_ssize_t offset;  /* its slot's offset in the instance, or -1: not a plain slot */
} Site;

static void
learn(Site *site, PyTypeObject *type)
{
    PyObject *descr = _PyType_Lookup(type, *site->name); /* borrowed */
    site->offset = -1;
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX)
            site->offset = member->offset;
    }
    site->type = (PyTypeObject *)Py_NewRef(type); /* kept: the offset is only valid for it */
}

/* ``obj.<name>``: a new reference, or NULL with an exception set. */
static inline PyObject *
get(Site *site, PyObject *obj)
{
    if (Py_TYPE(obj) != site->type) {
        if (site->type != NULL)
            return PyObject_GetAttr(obj, *site->name);
        learn(site, Py_TYPE(obj));
    }
    if (site->offset >= 0) {
        PyObject *value = *(PyObject **)((char *)obj + site->offset);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(obj, *site->name); /* raises for an unset slot */
}

/* Whether ``obj.<name>`` is ``expected`` (-1: an error). */
static int
is_at(Site *site, PyObject *obj, PyObject *expected)
{
    PyObject *value = get(site, obj);
    if (value == NULL)
        return -1;
    Py_DECREF(value);
    return value == expected;
}

/* ``obj.<name> = True`` (a slot written directly where the type sets attributes generically). */
static int
set_true(Site *site, PyObject *obj)
{
    if (site->type == NULL)
        learn(site, Py_TYPE(obj));
    if (Py_TYPE(obj) == site->type && site->offset >= 0 &&
        Py_TYPE(obj)->tp_setattro == PyObject_GenericSetAttr) {
        PyObject **slot = (PyObject **)((char *)obj + site->offset);
        PyObject *old = *slot;
        *slot = Py_NewRef(Py_True);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(obj, *site->name, Py_True);
}

/* The attribute as a C double (the cache's times), or -1 with an exception set. */
static int
get_double(Site *site, PyObject *obj, double *out)
{
    PyObject *value = get(site, obj);
    if (value == NULL)
        return -1;
    *out = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* The decimal digits of ``value`` (>= 0) written at ``out``; their count. */
static int
digits(char *out, long long value)
{
    char reversed[20];
    int n = 0, i;
    do {
        reversed[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0 && n < (int)sizeof reversed);
    for (i = 0; i < n; i++)
        out[i] = reversed[n - 1 - i];
    return n;
}

/* "Age: <age>\r\nContent-Length: <size>\r\nDate: " at ``out`` (96 bytes), as snprintf would
 * write it without parsing a format each time; its size, or -1 for a negative number. */
static int
age_and_length(char *out, long long age, Py_ssize_t size)
{
    static const char age_name[] = "Age: ", length_name[] = "\r\nContent-Length: ",
                      date_name[] = "\r\nDate: ";
    char *o = out;
    if (age < 0 || size < 0)
        return -1;
    memcpy(o, age_name, sizeof age_name - 1); o += sizeof age_name - 1;
    o += digits(o, age);
    memcpy(o, length_name, sizeof length_name - 1); o += sizeof length_name - 1;
    o += digits(o, (long long)size);
    memcpy(o, date_name, sizeof date_name - 1); o += sizeof date_name - 1;
    return (int)(o - out);
}

/* Renderer's Date: formatted once a second from its wall clock. */
static int
refresh_date(HitObject *self)
{
    double wall;
    long long second;
    if (read_clock(self->wall, &wall) < 0)
        return -1;
    second = (long long)wall; /* int(): towards zero */
    if (second != self->second) {
        struct tm t;
        time_t at = (time_t)second;
        int size;
        if (gmtime_r(&at, &t) == NULL) {
            PyErr_SetString(PyExc_OverflowError, "Hit: the wall clock is out of range");
            return -1;
        }
        size = snprintf(self->date, sizeof self->date, "%s, %02d %s %d %02d:%02d:%02d GMT",
                        DAYS[t.tm_wday], t.tm_mday, MONTHS[t.tm_mon], t.tm_year + 1900,
                        t.tm_hour, t.tm_min, t.tm_sec);
        if (size <= 0 || size >= (int)sizeof self->date) {
            PyErr_SetString(PyExc_OverflowError, "Hit: the wall clock is out of range");
            return -1;
        }
        self->date_size = size;
        self->second = second;
    }
    return 0;
}

/* A clock's reading as time.monotonic() / time.time() give it (_PyTime_AsSecondsDouble). */
static double
seconds_of(clockid_t clock)
{
    struct timespec ts;
    long long ns;
    clock_gettime(clock, &ts);
    ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return ns % 1000000000LL == 0 ? (double)(ns / 1000000000LL) : (double)ns / 1e9;
}

/* ``clock()``, read directly when it is time's own (the agent's are, tests inject others). */
static int
read_clock(PyObject *clock, double *out)
{
    PyObject *now;
    if (clock == monotonic) {
        *out = seconds_of(CLOCK_MONOTONIC);
        return 0;
    }
    if (clock == wall_time) {
        *out = seconds_of(CLOCK_REALTIME);
        return 0;
    }
    if ((now = PyObject_CallNoArgs(clock)) == NULL)
        return -1;
    *out = PyFloat_AsDouble(now);
    Py_DECREF(now);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static double
perf_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.perf_counter reads on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The schedule for the cipher's ``loop_aes_key`` (the first key's AES half, which
 * ``loop_decryptor`` uses too), where the CPU can use it; otherwise hits keep the context. */
static int
use_key(HitObject *self, PyObject *cipher)
{
    PyObject *key;
    aes_wipe(&self->aes, sizeof self->aes);
    self->aes_ready = 0;
    if (!aes_available())
        return 0;
    if ((key = PyObject_GetAttr(cipher, s_loop_aes_key)) == NULL)
        return -1;
    if (PyBytes_Check(key) && PyBytes_GET_SIZE(key) == BLOCK) {
        aes_expand(&self->aes, (const unsigned char *)PyBytes_AS_STRING(key));
        self->aes_ready = 1;
    }
    Py_DECREF(key);
    return 0;
}

/* The offset of ``type``'s ``runtime`` slot if it has one (context.Current: what it returns
 * when called, a frame less per read), else -1: the callable is called. */
static Py_ssize_t
runtime_slot(PyTypeObject *type)
{
    PyObject *descr = _PyType_Lookup(type, s_runtime); /* borrowed */
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX)
            return member->offset;
    }
    return -1;
}

/* ``current()``: the runtime serving now (a new reference, or NULL with an exception set). */
static PyObject *
serving_now(HitObject *self)
{
    if (self->current_slot >= 0) {
        PyObject *runtime = *(PyObject **)((char *)self->current + self->current_slot);
        if (runtime != NULL && runtime != Py_None)
            return Py_NewRef(runtime);
    }
    return PyObject_CallNoArgs(self->current); /* not started: its own error */
}

/* The cache's parts, read again when a reload brought another cache. */
static int
use_cache(HitObject *self, PyObject *cache)
{
    PyObject *entries = NULL, *clock = NULL, *cipher = NULL, *decryptor = NULL;
    if ((entries = PyObject_GetAttr(cache, s_entries)) == NULL ||
        (clock = PyObject_GetAttr(cache, s_clock)) == NULL ||
        (cipher = PyObject_GetAttr(cache, s_cipher)) == NULL ||
        (decryptor = PyObject_GetAttr(cipher, s_loop_decryptor)) == NULL)
        goto fail;
    if (!PyDict_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "Hit: the cache's entries are not a dict");
        goto fail;
    }
    if (use_key(self, cipher) < 0)
        goto fail;
    Py_DECREF(cipher);
    Py_XSETREF(self->entries, entries);
    Py_XSETREF(self->clock, clock);
    Py_XSETREF(self->decryptor, decryptor);
    Py_XSETREF(self->cache, Py_NewRef(cache));
    return 0;
fail:
    Py_XDECREF(entries);
    Py_XDECREF(clock);
    Py_XDECREF(cipher);
    Py_XDECREF(decryptor);
    return -1;
}

/* ``service.spared_at(key)``, remembered (a new reference to a tuple of backend names). */
static PyObject *
spared_names(HitObject *self, PyObject *service, PyObject *key)
{
    PyObject *names;
    if (service != self->names_of) {
        PyObject *young = PyDict_New(), *old = PyDict_New();
        if (young == NULL || old == NULL) {
            Py_XDECREF(young);
            Py_XDECREF(old);
            return NULL;
        }
        Py_XSETREF(self->names_young, young);
        Py_XSETREF(self->names_old, old);
        Py_XSETREF(self->names_of, Py_NewRef(service));
    }
    names = PyDict_GetItemWithError(self->names_young, key);
    if (names != NULL)
        return Py_NewRef(names);
    if (PyErr_Occurred())
        return NULL;
    names = PyDict_GetItemWithError(self->names_old, key);
    if (names != NULL) {
        Py_INCREF(names);
    } else {
        if (PyErr_Occurred())
            return NULL;
        names = PyObject_CallMethodOneArg(service, s_spared_at, key);
        if (names == NULL)
            return NULL;
        if (!PyTuple_Check(names)) {
            Py_DECREF(names);
            PyErr_SetString(PyExc_TypeError, "Hit: spared_at gave no tuple");
            return NULL;
        }
    }
    if (PyDict_GET_SIZE(self->names_young) >= self->half) { /* the old generation goes */
        PyObject *young = PyDict_New();
        if (young == NULL) {
            Py_DECREF(names);
            return NULL;
        }
        Py_SETREF(self->names_old, self->names_young);
        self->names_young = young;
    }
    if (PyDict_SetItem(self->names_young, key, names) < 0) {
        Py_DECREF(names);
        return NULL;
    }
    return names;
}

/* The avoided counter of a backend, remembered. A borrowed reference. */
static PyObject *
avoided_of(HitObject *self, PyObject *source)
{
    PyObject *avoided = PyDict_GetItemWithError(self->sources, source);
    if (avoided != NULL || PyErr_Occurred())
        return avoided;
    if ((avoided = PyObject_CallOneArg(self->avoided_counter, source)) == NULL)
        return NULL;
    if (PyDict_SetItem(self->sources, source, avoided) < 0) {
        Py_DECREF(avoided);
        return NULL;
    }
    Py_DECREF(avoided); /* the dict holds it */
    return avoided;
}

/* The runtime's parts, read again when a reload brought another runtime. */
static int
use_runtime(HitObject *self, PyObject *runtime)
{
    PyObject *policy, *access = NULL, *service = NULL;
    if ((policy = PyObject_GetAttr(runtime, s_policy)) == NULL ||
        (access = PyObject_GetAttr(runtime, s_access)) == NULL ||
        (service = PyObject_GetAttr(runtime, s_service)) == NULL) {
        Py_XDECREF(policy);
        Py_XDECREF(access);
        return -1;
    }
    Py_XSETREF(self->policy, policy);
    Py_XSETREF(self->access, access);
    Py_XSETREF(self->service, service);
    Py_XSETREF(self->runtime, Py_NewRef(runtime));
    return 0;
}

/* A request that was answered here, remembered by its bytes: what answering it again takes
 * from the parsed request (its key, labels, framing and JSON prefix, inline) and the cache
 * entry it was answered from. Valid under the runtime and cache it was made with (the Hit
 * forgets every record when either changes) while its entry is not ``gone``. One object in
 * place of the head, the read, the key's lookup and the LRU's node: a mix of thousands of
 * keys touches far less memory per read. */
typedef struct {
    PyObject_VAR_HEAD /* ob_size: the prefix's size */
    PyObject *request; /* the head memo's own bytes for it: what the records are keyed by */
    PyObject *key, *entry, *kind_label;
    PyObject *body; /* a miss's 404 body (NULL for a value) */
    int keep_alive;
    char prefix[1];
} RecordObject;

static void
Record_dealloc(RecordObject *self)
{
    Py_XDECREF(self->request);
    Py_XDECREF(self->key);
    Py_XDECREF(self->entry);
    Py_XDECREF(self->kind_label);
    Py_XDECREF(self->body);
    PyObject_Free(self);
}

static PyTypeObject RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "secrets_agent.server._hit.Record",
    .tp_doc = "A request answered before, with the cache entry it was answered from.",
    .tp_basicsize = offsetof(RecordObject, prefix),
    .tp_itemsize = 1,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Record_dealloc,
};

/* What an answer is made of, from a parsed request or a record (references borrowed). */
typedef struct {
    PyObject *key, *entry, *kind_label;
    PyObject *read; /* the parsed read (NULL from a record): its prefix and kind, when needed */
    const char *prefix;
    Py_ssize_t prefix_size;
    PyObject *body;
    int keep_alive;
} Plan;

static Site entry_read = {&s_read, NULL, -1};
static Site entry_used = {&s_used, NULL, -1};
static Site entry_gone = {&s_gone, NULL, -1};
static Site head_read = {&s_read, NULL, -1};
static Site head_kind_label = {&s_kind_label, NULL, -1};
static Site head_keep_alive = {&s_keep_alive, NULL, -1};
static Site head_request = {&s_request, NULL, -1};
static Site caller_allowed_by = {&s_allowed_by, NULL, -1};
static Site caller_rules_of = {&s_rules_of, NULL, -1};
static Site caller_rules = {&s_rules, NULL, -1};
static Site rules_memo = {&s_rules_memo, NULL, -1};
static Site memo_young = {&s_young, NULL, -1};
static Site read_invalid = {&s_invalid, NULL, -1};
static Site read_forced = {&s_forced, NULL, -1};
static Site read_key = {&s_key, NULL, -1};
static Site read_prefix = {&s_prefix, NULL, -1};
static Site read_kind = {&s_kind, NULL, -1};
static Site audit_enabled = {&s_enabled, NULL, -1};
static Site service_cache = {&s_cache, NULL, -1};
static Site entry_expires_at = {&s_expires_at, NULL, -1};
static Site entry_stored_at = {&s_stored_at, NULL, -1};
static Site entry_token = {&s_token, NULL, -1};
static Site entry_source = {&s_source, NULL, -1};
static Site entry_refresh_at = {&s_refresh_at, NULL, -1};
static Site tally_pending = {&s_pending, NULL, -1};
static Site hit_memo_young = {&s_young, NULL, -1};

/* Metrics.read_counters(label), remembered: a new reference to its 4-tuple. */
static PyObject *
counters_of(HitObject *self, PyObject *label)
{
    PyObject *counters = PyDict_GetItemWithError(self->kinds, label);
    if (counters != NULL)
        return Py_NewRef(counters);
    if (PyErr_Occurred() || (counters = PyObject_CallOneArg(self->read_counters, label)) == NULL)
        return NULL;
    if (!PyTuple_Check(counters) || PyTuple_GET_SIZE(counters) != 4) {
        Py_DECREF(counters);
        PyErr_SetString(PyExc_TypeError, "Hit: read_counters gave no 4-tuple");
        return NULL;
    }
    if (PyDict_SetItem(self->kinds, label, counters) < 0) {
        Py_DECREF(counters);
        return NULL;
    }
    return counters;
}

/* ``*out``: where this Hit counts reads of kind ``label``, or NULL where it has no room (its
 * reads then go to the dicts at once). 0, or -1 with an exception set. */
static int
kind_count(HitObject *self, PyObject *label, KindCount **out)
{
    KindCount *free_slot = NULL;
    int i;
    *out = NULL;
    if (self->bounds_size < 0)
        return 0;
    for (i = 0; i < TALLY_KINDS; i++) {
        KindCount *k = &self->kinds_counted[i];
        if (k->label == label) {
            *out = k;
            return 0;
        }
        if (k->label == NULL && free_slot == NULL)
            free_slot = k;
    }
    if (free_slot == NULL)
        return 0;
    if ((free_slot->counters = counters_of(self, label)) == NULL)
        return -1;
    free_slot->label = Py_NewRef(label);
    *out = free_slot;
    return 0;
}

/* LatencyHistogram.observe, kept here until ``drain``. */
static void
observe_here(HitObject *self, KindCount *kind, double seconds)
{
    Py_ssize_t lo = 0, hi = self->bounds_size, mid;
    while (lo < hi) { /* bisect.bisect_left */
        mid = (lo + hi) / 2;
        if (self->bounds_c[mid] < seconds)
            lo = mid + 1;
        else
            hi = mid;
    }
    kind->buckets[lo]++;
    kind->seconds += seconds;
    kind->observed = 1;
}

/* Tally.add(child), kept here until ``drain`` (in the Tally's own dict where there is no room). */
static int
count(HitObject *self, PyObject *child)
{
    ChildCount *free_slot = NULL;
    PyObject *pending;
    int i, failed;
    for (i = 0; i < TALLY_CHILDREN; i++) {
        ChildCount *c = &self->children[i];
        if (c->child == child) {
            c->count++;
            return 0;
        }
        if (c->child == NULL && free_slot == NULL)
            free_slot = c;
    }
    if (free_slot != NULL) {
        free_slot->child = Py_NewRef(child);
        free_slot->count = 1;
        return 0;
    }
    if ((pending = get(&tally_pending, self->tally)) == NULL)
        return -1;
    failed = bump(pending, child);
    Py_DECREF(pending);
    return failed;
}

/* Forget every record (a reload brought another runtime or cache). */
static int
forget_records(HitObject *self)
{
    PyObject *young = PyDict_New(), *old = PyDict_New();
    if (young == NULL || old == NULL) {
        Py_XDECREF(young);
        Py_XDECREF(old);
        return -1;
    }
    Py_XSETREF(self->records_young, young);
    Py_XSETREF(self->records_old, old);
    return 0;
}

/* The runtime in force and its cache, read again (and the records forgotten) when either
 * changed; 0, or -1 with an exception set. */
static int
use_current(HitObject *self)
{
    PyObject *runtime, *cache;
    int changed = 0;
    if ((runtime = serving_now(self)) == NULL)
        return -1;
    if (runtime != self->runtime) {
        if (use_runtime(self, runtime) < 0) { Py_DECREF(runtime); return -1; }
        changed = 1;
    }
    Py_DECREF(runtime);
    if ((cache = get(&service_cache, self->service)) == NULL)
        return -1;
    if (cache != self->cache) {
        if (use_cache(self, cache) < 0) { Py_DECREF(cache); return -1; }
        changed = 1;
    }
    Py_DECREF(cache);
    return changed ? forget_records(self) : 0;
}

/* Reads.plain's checks of the caller: allowed under the policy in force, an access decision
 * already made and allowing ``key``, no audit. 1: they pass; 0: decline; -1: an error. */
static int
caller_may(HitObject *self, PyObject *caller, PyObject *key)
{
    int is;
    if ((is = is_at(&caller_allowed_by, caller, self->policy)) != 1) return is;
    if (self->access != Py_None) {
        PyObject *rules, *memo, *young, *decision;
        if ((is = is_at(&caller_rules_of, caller, self->access)) != 1) return is;
        if ((rules = get(&caller_rules, caller)) == NULL) return -1;
        memo = rules == Py_None ? NULL : get(&rules_memo, rules);
        Py_DECREF(rules);
        if (memo == NULL) return PyErr_Occurred() ? -1 : 0;
        young = get(&memo_young, memo);
        Py_DECREF(memo);
        if (young == NULL) return -1;
        decision = PyDict_Check(young) ? PyDict_GetItemWithError(young, key) : NULL;
        Py_DECREF(young);
        if (decision != Py_True) return PyErr_Occurred() ? -1 : 0;
    }
    if (self->audit != Py_None) {
        PyObject *enabled = get(&audit_enabled, self->audit);
        if (enabled == NULL) return -1;
        is = PyObject_IsTrue(enabled);
        Py_DECREF(enabled);
        if (is != 0) return is < 0 ? -1 : 0;
    }
    return 1;
}

/* Room in the young generation of records: when it is full, the old one goes, and the young
 * one becomes it (as server/memo.py's Generations). */
static int
records_room(HitObject *self)
{
    PyObject *young;
    if (PyDict_GET_SIZE(self->records_young) < self->half)
        return 0;
    if ((young = PyDict_New()) == NULL)
        return -1;
    Py_SETREF(self->records_old, self->records_young);
    self->records_young = young;
    return 0;
}

/* Remember ``plan`` (just answered) as the record of ``data`` (the head memo's own key for
 * it), in two generations of ``half`` records each, as server/memo.py's Generations. */
static int
remember(HitObject *self, PyObject *data, const Plan *plan)
{
    RecordObject *record;
    int failed;
    record = PyObject_NewVar(RecordObject, &RecordType, plan->prefix_size);
    if (record == NULL)
        return -1;
    record->request = Py_NewRef(data);
    record->key = Py_NewRef(plan->key);
    record->entry = Py_NewRef(plan->entry);
    record->kind_label = Py_NewRef(plan->kind_label);
    record->body = Py_XNewRef(plan->body);
    record->keep_alive = plan->keep_alive;
    if (plan->prefix_size)
        memcpy(record->prefix, plan->prefix, plan->prefix_size);
    failed = records_room(self) < 0 ||
             PyDict_SetItem(self->records_young, data, (PyObject *)record) < 0;
    Py_DECREF(record);
    return failed ? -1 : 0;
}

/* The record of ``data``: young, else old (then young again, under its own bytes: not
 * ``data``, the connection's copy, which it would otherwise hold); borrowed, or NULL. */
static PyObject *
recall(HitObject *self, PyObject *data)
{
    PyObject *record = PyDict_GetItemWithError(self->records_young, data);
    if (record != NULL || PyErr_Occurred() || PyDict_GET_SIZE(self->records_old) == 0)
        return record;
    record = PyDict_GetItemWithError(self->records_old, data);
    if (record == NULL)
        return NULL;
    Py_INCREF(record); /* the old generation may go with it */
    if (records_room(self) < 0 ||
        PyDict_SetItem(self->records_young, ((RecordObject *)record)->request, record) < 0) {
        Py_DECREF(record);
        return NULL;
    }
    Py_DECREF(record); /* the young generation holds it */
    return record;
}

/* SecretCache.fresh and what follows: answer ``plan`` from its entry if it is fresh (PASS,
 * with no effect, otherwise), count it, write it. */
static PyObject *
serve(HitObject *self, double started, Plan *plan, PyObject *transport)
{
    double now, expires_at, refresh_at, stored_at, age;
    PyObject *entry = plan->entry, *token = NULL, *source = NULL, *plain = NULL, *prefix = NULL;
    PyObject *counters = NULL, *answer = NULL, *written, *body_bytes = NULL;
    KindCount *kind = NULL;
    PyObject *result = NULL;
    Py_ssize_t quoted_size = 0, plain_size = 0, body_size, opened_size = 0;
    const unsigned char *plain_text = NULL;
    /* Where _aes.h decrypts to: on the stack for the usual value, else allocated; wiped. */
    unsigned char stack[1024], *opened = NULL;
    int status;
    long long age_seconds;

    if (read_clock(self->clock, &now) < 0 || get_double(&entry_expires_at, entry, &expires_at) < 0)
        goto error;
    if (!(now < expires_at)) goto decline;
    if (get_double(&entry_stored_at, entry, &stored_at) < 0 ||
        (token = get(&entry_token, entry)) == NULL ||
        (source = get(&entry_source, entry)) == NULL) {
        goto error;
    }
    if (token != Py_None) {
        Py_ssize_t size, pad;
        PyObject *view;
        const unsigned char *padded;
        if (get_double(&entry_refresh_at, entry, &refresh_at) < 0) { goto error; }
        if (!(now < refresh_at) || !PyBytes_Check(token)) { /* refresh-ahead: the reference's */
            goto decline;
        }
        if (plan->prefix == NULL) { /* from a parsed read */
            if (plan->read == NULL) { goto decline; }
            if ((prefix = get(&read_prefix, plan->read)) == NULL) { goto error; }
            plan->prefix = PyUnicode_Check(prefix)
                               ? PyUnicode_AsUTF8AndSize(prefix, &plan->prefix_size) : NULL;
            if (plan->prefix == NULL) { goto error_or_decline; }
        }
        size = PyBytes_GET_SIZE(token) - FERNET_HEAD - FERNET_MAC;
        if (size < 2 * BLOCK || size % BLOCK) { goto decline; }
        if (self->aes_ready && native_allowed) {
            /* FernetOpener.unseal's plaintext, decrypted here: the IV, then the ciphertext */
            const unsigned char *iv = (const unsigned char *)PyBytes_AS_STRING(token) + FERNET_HEAD;
            opened_size = size - BLOCK;
            if ((size_t)opened_size <= sizeof stack) {
                opened = stack;
            } else if ((opened = PyMem_Malloc(opened_size)) == NULL) {
                opened_size = 0;
                PyErr_NoMemory();
                goto error;
            }
            aes_cbc_decrypt(&self->aes, iv, iv + BLOCK, (size_t)opened_size, opened);
            padded = opened;
        } else {
            /* FernetOpener.unseal: the IV and the ciphertext through the loop's own context */
            view = PyMemoryView_FromMemory(PyBytes_AS_STRING(token) + FERNET_HEAD, size, PyBUF_READ);
            if (view == NULL) { goto error; }
            plain = PyObject_CallMethodOneArg(self->decryptor, s_update, view);
            Py_DECREF(view);
            if (plain == NULL) { goto error; }
            if (!PyBytes_Check(plain) || PyBytes_GET_SIZE(plain) != size) {
                goto decline;
            }
            /* its first block out is the IV's garbage: dropped */
            padded = (const unsigned char *)PyBytes_AS_STRING(plain) + BLOCK;
        }
        pad = padded[size - BLOCK - 1];
        if (pad < 1 || pad > BLOCK) { goto decline; }
        plain_text = padded;
        plain_size = size - BLOCK - pad;
        if ((quoted_size = quote(plain_text, plain_size, NULL)) < 0) {
            goto decline;
        }
        status = 200;
        body_size = plan->prefix_size + quoted_size + 1;
    } else {
        if (plan->body == NULL) { /* from a parsed read */
            PyObject *kind;
            if (plan->read == NULL) { goto decline; }
            if ((kind = get(&read_kind, plan->read)) == NULL) { goto error; }
            plan->body = PyDict_GetItemWithError(self->not_found, kind); /* borrowed */
            Py_DECREF(kind);
            if (plan->body == NULL || !PyBytes_Check(plan->body)) {
                plan->body = NULL;
                goto error_or_decline;
            }
        }
        body_bytes = Py_NewRef(plan->body);
        status = 404;
        body_size = PyBytes_GET_SIZE(body_bytes);
    }

    /* From here the read is answered: the cache's, the metrics' and the answer's effects. */
    if (set_true(&entry_used, entry) < 0 || set_true(&entry_read, entry) < 0)
        goto error;
    age = now - stored_at;
    age = age > 0.0 ? age : 0.0;
    age_seconds = (long long)age;
    /* SecretService.cached's counts (Metrics.served), then Metrics.answered's */
    if (kind_count(self, plan->kind_label, &kind) < 0)
        goto error;
    if ((counters = kind != NULL ? Py_NewRef(kind->counters) : counters_of(self, plan->kind_label)) == NULL)
        goto error;
    if (count(self, PyTuple_GET_ITEM(counters, status == 200 ? 2 : 3)) < 0)
        goto error;
    if (source != Py_None) {
        PyObject *avoided = avoided_of(self, source);
        if (avoided == NULL || count(self, avoided) < 0) goto error;
    } else {
        PyObject *names = spared_names(self, self->service, plan->key);
        Py_ssize_t i;
        if (names == NULL) goto error;
        for (i = 0; i < PyTuple_GET_SIZE(names); i++) {
            PyObject *avoided = avoided_of(self, PyTuple_GET_ITEM(names, i));
            if (avoided == NULL || count(self, avoided) < 0) {
                Py_DECREF(names);
                goto error;
            }
        }
        Py_DECREF(names);
    }
    if (count(self, PyTuple_GET_ITEM(counters, status == 200 ? 0 : 1)) < 0)
        goto error;
    if (kind != NULL)
        observe_here(self, kind, perf_now() - started);
    else if (observe(self, plan->kind_label, perf_now() - started) < 0)
        goto error;

    /* Renderer.parts: the head up to Age, then Age, Content-Length, Date, the framing, body */
    if (refresh_date(self) < 0) goto error;
    {
        PyObject *head_bytes = status == 200 ? self->hit_head : self->negative_head;
        char numbers[96];
        int numbers_size = age_and_length(numbers, age_seconds, body_size);
        static const char close_line[] = "Connection: close\r\n";
        int keep_alive = plan->keep_alive;
        Py_ssize_t close_size = keep_alive ? 0 : (Py_ssize_t)(sizeof close_line - 1);
        Py_ssize_t head_size = PyBytes_GET_SIZE(head_bytes);
        Py_ssize_t total = head_size + numbers_size + self->date_size + 2 + close_size + 2 + body_size;
        char *o;
        if (numbers_size <= 0 || numbers_size >= (int)sizeof numbers) {
            PyErr_SetString(PyExc_OverflowError, "Hit: an age out of range");
            goto error;
        }
        if ((answer = PyBytes_FromStringAndSize(NULL, total)) == NULL) goto error;
        o = PyBytes_AS_STRING(answer);
        memcpy(o, PyBytes_AS_STRING(head_bytes), head_size); o += head_size;
        memcpy(o, numbers, numbers_size); o += numbers_size;
        memcpy(o, self->date, self->date_size); o += self->date_size;
        *o++ = '\r'; *o++ = '\n';
        if (close_size) { memcpy(o, close_line, close_size); o += close_size; }
        *o++ = '\r'; *o++ = '\n';
        if (status == 200) {
            memcpy(o, plan->prefix, plan->prefix_size); o += plan->prefix_size;
            quote(plain_text, plain_size, o); o += quoted_size;
            *o++ = '}';
        } else {
            memcpy(o, PyBytes_AS_STRING(body_bytes), body_size); o += body_size;
        }
    }
    written = PyObject_CallMethodOneArg(transport, s_write, answer);
    if (written == NULL) goto error;
    Py_DECREF(written);
    result = PyLong_FromLong(plan->keep_alive ? KEEP : CLOSE);
    goto done;

error_or_decline:
    if (PyErr_Occurred()) goto error;
decline:
    result = PyLong_FromLong(PASS);
    goto done;
error:
    result = NULL;
done:
    if (opened != NULL) {
        aes_wipe(opened, (size_t)opened_size);
        if (opened != stack)
            PyMem_Free(opened);
    }
    Py_XDECREF(token);
    Py_XDECREF(source);
    Py_XDECREF(plain);
    Py_XDECREF(prefix); /* plan->prefix points into it, and the read keeps it */
    Py_XDECREF(counters);
    Py_XDECREF(answer);
    Py_XDECREF(body_bytes);
    return result;
}

/* A parsed read: Reads.plain's checks, the cache's entry, then ``serve``; remembered under
 * its request's bytes once answered, if the head memo holds it. */
static PyObject *
answer_read(HitObject *self, PyObject *caller, PyObject *head, PyObject *transport)
{
    double started = perf_now();
    PyObject *read = NULL, *key = NULL, *entry = NULL, *kind_label = NULL, *result = NULL;
    PyObject *data = NULL, *runtime = NULL, *cache = NULL;
    Plan plan;
    int is = 0, keep_alive;

    if ((read = get(&head_read, head)) == NULL || use_current(self) < 0)
        goto error;
    /* Reads.plain: a valid read, not refresh-now, no team; then the caller's checks */
    if ((is = is_at(&read_invalid, read, Py_None)) != 1) goto decline_or_error;
    if ((is = is_at(&read_forced, read, Py_False)) != 1) goto decline_or_error;
    if ((key = get(&read_key, read)) == NULL) goto error;
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 3 || PyTuple_GET_ITEM(key, 2) != Py_None)
        goto decline;
    if ((is = caller_may(self, caller, key)) != 1) goto decline_or_error;
    /* SecretCache.fresh's lookup */
    entry = PyDict_GetItemWithError(self->entries, key);
    if (entry == NULL) { if (PyErr_Occurred()) goto error; goto decline; }
    Py_INCREF(entry);
    if ((kind_label = get(&head_kind_label, head)) == NULL) goto error;
    if ((keep_alive = is_at(&head_keep_alive, head, Py_True)) < 0) goto error;
    plan = (Plan){key, entry, kind_label, read, NULL, 0, NULL, keep_alive};
    /* Held (not only compared): the write runs Python code, which may reload and have this
     * Hit answer another read under the new runtime and cache (forgetting every record).
     * What was answered under the old ones is then not remembered: its entry belongs to a
     * cache dropped whole, which never marks it gone. */
    runtime = Py_NewRef(self->runtime);
    cache = Py_NewRef(self->cache);
    result = serve(self, started, &plan, transport);
    if (result != NULL && PyLong_AsLong(result) != PASS && self->runtime == runtime &&
        self->cache == cache) {
        /* Answered, written and counted: a read that cannot be remembered (no request bytes
         * on the head, no memory) is only answered the longer way the next time. */
        if ((data = get(&head_request, head)) == NULL ||
            (PyBytes_CheckExact(data) && remember(self, data, &plan) < 0))
            PyErr_Clear();
    }
    goto done;

decline_or_error:
    if (is < 0) goto error;
decline:
    result = PyLong_FromLong(PASS);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(read);
    Py_XDECREF(key);
    Py_XDECREF(entry);
    Py_XDECREF(kind_label);
    Py_XDECREF(data);
    Py_XDECREF(runtime);
    Py_XDECREF(cache);
    return result;
}

/* A remembered request: the runtime and cache unchanged, the caller's checks, the entry still
 * the cache's, then ``serve``. PASS (no effect) leaves it to the parsed read. */
static PyObject *
answer_record(HitObject *self, PyObject *caller, RecordObject *record, PyObject *transport)
{
    double started = perf_now();
    PyObject *runtime;
    Plan plan;
    int is;
    if ((runtime = serving_now(self)) == NULL)
        return NULL;
    Py_DECREF(runtime); /* the runtime holds it: only its identity is compared */
    if (runtime != self->runtime)
        return PyLong_FromLong(PASS);
    {
        PyObject *cache = get(&service_cache, self->service);
        if (cache == NULL) return NULL;
        Py_DECREF(cache);
        if (cache != self->cache) return PyLong_FromLong(PASS);
    }
    if ((is = caller_may(self, caller, record->key)) != 1)
        return is < 0 ? NULL : PyLong_FromLong(PASS);
    if ((is = is_at(&entry_gone, record->entry, Py_False)) != 1)
        return is < 0 ? NULL : PyLong_FromLong(PASS);
    plan = (Plan){record->key, record->entry, record->kind_label, NULL,
                  record->body == NULL ? record->prefix : NULL, Py_SIZE(record), record->body,
                  record->keep_alive};
    return serve(self, started, &plan, transport);
}

static PyObject *
Hit_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HitObject *self = (HitObject *)callable;
    PyObject *young, *head, *record, *result;
    if (PyVectorcall_NARGS(nargsf) != 3 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "Hit(caller, data, transport)");
        return NULL;
    }
    if (self->memo == NULL) {
        PyErr_SetString(PyExc_TypeError, "Hit: not initialised");
        return NULL;
    }
    if ((record = recall(self, args[1])) != NULL) {
        Py_INCREF(record);
        result = answer_record(self, args[0], (RecordObject *)record, args[2]);
        Py_DECREF(record);
        if (result == NULL || PyLong_AsLong(result) != PASS)
            return result;
        Py_DECREF(result);
    } else if (PyErr_Occurred()) {
        return NULL;
    }
    if ((young = get(&hit_memo_young, self->memo)) == NULL)
        return NULL;
    head = PyDict_Check(young) ? PyDict_GetItemWithError(young, args[1]) : NULL;
    Py_XINCREF(head);
    Py_DECREF(young);
    if (head == NULL || head == Py_None) {
        Py_XDECREF(head);
        return PyErr_Occurred() ? NULL : PyLong_FromLong(PASS);
    }
    result = answer_read(self, args[0], head, args[2]);
    Py_DECREF(head);
    return result;
}

static PyObject *
Hit_answer(HitObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "answer(caller, head, transport)");
        return NULL;
    }
    if (self->memo == NULL) {
        PyErr_SetString(PyExc_TypeError, "Hit: not initialised");
        return NULL;
    }
    return answer_read(self, args[0], args[1], args[2]);
}

/* drain(): the counts kept here into the Tally's pending counts and the latency histogram.
 * Each is taken and zeroed before any Python code runs, so a read counted meanwhile (the
 * histogram's code could switch threads) is kept for the next drain, never lost. */
static PyObject *
Hit_drain(HitObject *self, PyObject *unused)
{
    int i;
    if (self->tally == NULL)
        Py_RETURN_NONE;
    for (i = 0; i < TALLY_CHILDREN; i++) {
        ChildCount *c = &self->children[i];
        long long n = c->count;
        PyObject *child, *pending, *total;
        int failed;
        if (c->child == NULL || n == 0)
            continue;
        c->count = 0;
        child = Py_NewRef(c->child);
        if ((pending = get(&tally_pending, self->tally)) == NULL) {
            Py_DECREF(child);
            return NULL;
        }
        total = PyDict_GetItemWithError(pending, child);
        if (total == NULL && PyErr_Occurred()) {
            failed = -1;
        } else {
            PyObject *more = PyLong_FromLongLong(n);
            PyObject *sum = more == NULL || total == NULL ? Py_XNewRef(more) : PyNumber_Add(total, more);
            failed = sum == NULL ? -1 : PyDict_SetItem(pending, child, sum);
            Py_XDECREF(sum);
            Py_XDECREF(more);
        }
        Py_DECREF(pending);
        Py_DECREF(child);
        if (failed < 0) {
            c->count += n; /* not handed over: kept for the next drain */
            return NULL;
        }
    }
    for (i = 0; i < TALLY_KINDS; i++) {
        KindCount *k = &self->kinds_counted[i];
        long long buckets[TALLY_BUCKETS + 1];
        double seconds = k->seconds;
        PyObject *label, *list, *result;
        Py_ssize_t b;
        if (k->label == NULL || !k->observed)
            continue;
        memcpy(buckets, k->buckets, sizeof buckets);
        memset(k->buckets, 0, sizeof k->buckets);
        k->seconds = 0.0;
        k->observed = 0;
        label = Py_NewRef(k->label);
        if ((list = PyList_New(self->bounds_size + 1)) == NULL)
            goto keep;
        for (b = 0; b <= self->bounds_size; b++) {
            PyObject *n = PyLong_FromLongLong(buckets[b]);
            if (n == NULL) {
                Py_DECREF(list);
                goto keep;
            }
            PyList_SET_ITEM(list, b, n);
        }
        result = PyObject_CallMethod(self->histogram, "merge", "OOd", label, list, seconds);
        Py_DECREF(list);
        if (result == NULL)
            goto keep;
        Py_DECREF(label);
        Py_DECREF(result);
        continue;
    keep: /* not handed over: kept for the next drain (with what was counted meanwhile) */
        Py_DECREF(label);
        for (b = 0; b <= TALLY_BUCKETS; b++)
            k->buckets[b] += buckets[b];
        k->seconds += seconds;
        k->observed = 1;
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Hit_methods[] = {
    {"drain", (PyCFunction)Hit_drain, METH_NOARGS,
     "Hand the counts kept here to the Tally and the latency histogram."},
    {"answer", (PyCFunction)(void (*)(void))Hit_answer, METH_FASTCALL,
     "Answer a parsed read if it is plain and the cache holds it fresh."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "secrets_agent.server._hit.Hit",
    .tp_doc = "A plain cached read, answered and written; 0 (PASS) for anything else.",
    .tp_basicsize = sizeof(HitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(HitObject, vectorcall),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Hit_init,
    .tp_dealloc = (destructor)Hit_dealloc,
    .tp_finalize = (destructor)Hit_finalize,
    .tp_weaklistoffset = offsetof(HitObject, weakreflist),
    .tp_traverse = (traverseproc)Hit_traverse,
    .tp_clear = (inquiry)Hit_clear,
    .tp_call = PyVectorcall_Call,
    .tp_methods = Hit_methods,
};

/* native_aes(allowed=None): whether hits decrypt with the CPU's AES instructions (the CPU
 * has them, and they are allowed); ``allowed`` allows or forbids it first, for every Hit. */
static PyObject *
native_aes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "native_aes(allowed=None)");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None) {
        int allowed = PyObject_IsTrue(args[0]);
        if (allowed < 0)
            return NULL;
        native_allowed = allowed;
    }
    return PyBool_FromLong(native_allowed && aes_available());
}

static PyMethodDef module_methods[] = {
    {"native_aes", (PyCFunction)(void (*)(void))native_aes, METH_FASTCALL,
     "Whether hits decrypt with the CPU's AES instructions; ``allowed`` sets it first."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hit_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "secrets_agent.server._hit",
    .m_doc = "The compiled twin of secrets_agent.server.hit.Hit.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__hit(void)
{
    PyObject *module;
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;
    for (int c = 0x20; c < 0x7f; c++)
        PLAIN[c] = c != '"' && c != '\\';
    INTERN(s_young, "young") INTERN(s_read, "read") INTERN(s_keep_alive, "keep_alive")
    INTERN(s_kind_label, "kind_label") INTERN(s_policy, "policy") INTERN(s_access, "access")
    INTERN(s_service, "service") INTERN(s_allowed_by, "allowed_by") INTERN(s_rules, "rules")
    INTERN(s_rules_of, "rules_of") INTERN(s_memo, "memo") INTERN(s_rules_memo, "_memo") INTERN(s_invalid, "invalid")
    INTERN(s_forced, "forced") INTERN(s_key, "key") INTERN(s_prefix, "prefix")
    INTERN(s_kind, "kind") INTERN(s_enabled, "enabled") INTERN(s_cache, "cache")
    INTERN(s_entries, "_entries") INTERN(s_clock, "_clock") INTERN(s_cipher, "cipher")
    INTERN(s_loop_decryptor, "loop_decryptor") INTERN(s_loop_aes_key, "loop_aes_key") INTERN(s_token, "token")
    INTERN(s_stored_at, "stored_at") INTERN(s_expires_at, "expires_at")
    INTERN(s_source, "source") INTERN(s_refresh_at, "refresh_at")
    INTERN(s_update, "update") INTERN(s_write, "write")
    INTERN(s_pending, "pending") INTERN(s_counts, "_counts") INTERN(s_sums, "_sums")
    INTERN(s_bounds, "_bounds") INTERN(s_spared_at, "spared_at") INTERN(s_size, "size")
    INTERN(s_current, "current") INTERN(s_runtime, "runtime") INTERN(s_audit, "audit") INTERN(s_tally, "tally")
    INTERN(s_histogram, "histogram") INTERN(s_wall, "wall")
    INTERN(s_heads, "heads") INTERN(s_not_found, "not_found")
    INTERN(s_read_counters, "read_counters") INTERN(s_avoided_counter, "avoided_counter")
    INTERN(s_used, "used") INTERN(s_gone, "gone") INTERN(s_request, "request")
#undef INTERN
    if ((one = PyLong_FromLong(1)) == NULL)
        return NULL;
    {
        PyObject *time_module = PyImport_ImportModule("time");
        if (time_module == NULL)
            return NULL;
        monotonic = PyObject_GetAttrString(time_module, "monotonic");
        wall_time = PyObject_GetAttrString(time_module, "time");
        Py_DECREF(time_module);
        if (monotonic == NULL || wall_time == NULL)
            return NULL;
    }
    if (PyType_Ready(&HitType) < 0 || PyType_Ready(&RecordType) < 0)
        return NULL;
    if ((module = PyModule_Create(&hit_module)) == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Hit", (PyObject *)&HitType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
