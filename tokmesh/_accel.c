/*
 * tokmesh._accel: the compiled loop behind a read's run of RESP "TM.VALIDATE token".
 *
 * Why it exists: a gateway pipelines the validations of many requests, each with a
 * different token. In pure Python every one of them pays a hiredis parse into lists of
 * bytes, a hashlib object (OpenSSL's per-call set-up costs more than hashing 48 bytes),
 * the digest's dict lookup, the session lookup and the checks, about 2.7 us each; Redis
 * answers a GET of a distinct key in well under 1 us. This loop reads the frames straight
 * from the received bytes, hashes each token (with the CPU's SHA instructions when it has
 * them), looks the digest and the session up in the live dicts and checks the session,
 * without making a Python object per token other than the digest key.
 *
 * It answers only the plain case: a well-formed frame whose token belongs to a present,
 * unrevoked, unexpired session. It stops before the first frame that is anything else
 * (another command, an incomplete frame, an unknown or revoked token...) and reports how
 * many it answered and where it stopped; the Python path then handles the rest, so every
 * error keeps exactly one implementation. It changes nothing: the caller decides whether
 * to use the answers (rate limit) and counts them.
 *
 * The pure-Python path stays and is selected automatically when this module is absent
 * (no compiler at install time) or disabled (TOKMESH_ACCEL=0); the tests run both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TM_HAVE_SHA_NI 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* ---- SHA-256 (FIPS 180-4) ---------------------------------------------------------- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static const uint32_t H256[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

typedef void (*blocks_fn)(uint32_t state[8], const uint8_t *data, size_t nblocks);

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
           (uint32_t)p[3];
}

/* Portable compression function: any CPU. */
static void sha256_blocks_portable(uint32_t state[8], const uint8_t *data, size_t nblocks)
{
    uint32_t w[16];
    while (nblocks--) {
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int i = 0; i < 64; i++) {
            uint32_t wi;
            if (i < 16) {
                wi = w[i] = load_be32(data + 4 * i);
            } else {
                uint32_t w15 = w[(i - 15) & 15], w2 = w[(i - 2) & 15];
                uint32_t s0 = ROR32(w15, 7) ^ ROR32(w15, 18) ^ (w15 >> 3);
                uint32_t s1 = ROR32(w2, 17) ^ ROR32(w2, 19) ^ (w2 >> 10);
                wi = w[i & 15] = w[i & 15] + s0 + w[(i - 7) & 15] + s1;
            }
            uint32_t S1 = ROR32(e, 6) ^ ROR32(e, 11) ^ ROR32(e, 25);
            uint32_t ch = (e & f) ^ (~e & g);
            uint32_t t1 = h + S1 + ch + K256[i] + wi;
            uint32_t S0 = ROR32(a, 2) ^ ROR32(a, 13) ^ ROR32(a, 22);
            uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
            uint32_t t2 = S0 + maj;
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
        state[4] += e;
        state[5] += f;
        state[6] += g;
        state[7] += h;
        data += 64;
    }
}

#ifdef TM_HAVE_SHA_NI
/*
 * The x86 SHA extensions: four rounds per pair of sha256rnds2, the message schedule
 * with sha256msg1/sha256msg2 (the layout of Intel's reference code). The state is kept
 * as ABEF/CDGH halves, the order the instructions want.
 */
__attribute__((target("sha,sse4.1,ssse3"))) static void
sha256_blocks_shani(uint32_t state[8], const uint8_t *data, size_t nblocks)
{
    const __m128i MASK = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i st1 = _mm_loadu_si128((const __m128i *)&state[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);       /* CDAB */
    st1 = _mm_shuffle_epi32(st1, 0x1B);       /* EFGH */
    __m128i st0 = _mm_alignr_epi8(tmp, st1, 8); /* ABEF */
    st1 = _mm_blend_epi16(st1, tmp, 0xF0);    /* CDGH */

    while (nblocks--) {
        __m128i abef = st0, cdgh = st1;
        __m128i m[4], msg;
#define TM_ROUNDS4(g)                                                                     \
    do {                                                                                  \
        if ((g) < 4)                                                                      \
            m[(g)] = _mm_shuffle_epi8(                                                    \
                _mm_loadu_si128((const __m128i *)(data + 16 * (g))), MASK);               \
        msg = _mm_add_epi32(m[(g) & 3], _mm_loadu_si128((const __m128i *)&K256[4 * (g)])); \
        st1 = _mm_sha256rnds2_epu32(st1, st0, msg);                                       \
        if ((g) >= 3 && (g) <= 14) {                                                      \
            __m128i t = _mm_alignr_epi8(m[(g) & 3], m[((g) + 3) & 3], 4);                 \
            m[((g) + 1) & 3] = _mm_add_epi32(m[((g) + 1) & 3], t);                        \
            m[((g) + 1) & 3] = _mm_sha256msg2_epu32(m[((g) + 1) & 3], m[(g) & 3]);        \
        }                                                                                 \
        msg = _mm_shuffle_epi32(msg, 0x0E);                                               \
        st0 = _mm_sha256rnds2_epu32(st0, st1, msg);                                       \
        if ((g) >= 1 && (g) <= 12)                                                        \
            m[((g) + 3) & 3] = _mm_sha256msg1_epu32(m[((g) + 3) & 3], m[(g) & 3]);        \
    } while (0)
        TM_ROUNDS4(0);
        TM_ROUNDS4(1);
        TM_ROUNDS4(2);
        TM_ROUNDS4(3);
        TM_ROUNDS4(4);
        TM_ROUNDS4(5);
        TM_ROUNDS4(6);
        TM_ROUNDS4(7);
        TM_ROUNDS4(8);
        TM_ROUNDS4(9);
        TM_ROUNDS4(10);
        TM_ROUNDS4(11);
        TM_ROUNDS4(12);
        TM_ROUNDS4(13);
        TM_ROUNDS4(14);
        TM_ROUNDS4(15);
#undef TM_ROUNDS4
        st0 = _mm_add_epi32(st0, abef);
        st1 = _mm_add_epi32(st1, cdgh);
        data += 64;
    }

    tmp = _mm_shuffle_epi32(st0, 0x1B);       /* FEBA */
    st1 = _mm_shuffle_epi32(st1, 0xB1);       /* DCHG */
    st0 = _mm_blend_epi16(tmp, st1, 0xF0);    /* DCBA */
    st1 = _mm_alignr_epi8(st1, tmp, 8);       /* ABEF */
    _mm_storeu_si128((__m128i *)&state[0], st0);
    _mm_storeu_si128((__m128i *)&state[4], st1);
}

static int cpu_has_sha_ni(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19))) /* SSSE3, SSE4.1 */
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 29)) != 0; /* SHA */
}
#endif

static blocks_fn sha256_blocks = sha256_blocks_portable;

/* One-shot SHA-256 of n bytes into out[32]. */
static void sha256(const uint8_t *p, size_t n, uint8_t out[32])
{
    uint32_t st[8];
    uint8_t tail[128];
    memcpy(st, H256, sizeof st);
    size_t full = n / 64;
    if (full)
        sha256_blocks(st, p, full);
    size_t rem = n - full * 64;
    memcpy(tail, p + full * 64, rem);
    tail[rem] = 0x80;
    size_t tail_len = rem + 1 + 8 <= 64 ? 64 : 128;
    memset(tail + rem + 1, 0, tail_len - rem - 1 - 8);
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha256_blocks(st, tail, tail_len / 64);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(st[i] >> 24);
        out[4 * i + 1] = (uint8_t)(st[i] >> 16);
        out[4 * i + 2] = (uint8_t)(st[i] >> 8);
        out[4 * i + 3] = (uint8_t)st[i];
    }
}

/* ---- session checks ------------------------------------------------------------------- */

/*
 * Where the four fields a validation reads live in a Session (a slotted class): the
 * offsets of its member descriptors, read once by configure(). A session of another
 * type (a subclass) is read with getattr.
 */
static PyTypeObject *session_type = NULL;
static Py_ssize_t off_is_deleted = -1, off_expires_at = -1, off_idle_timeout = -1,
                  off_last_active = -1;
static PyObject *str_is_deleted, *str_expires_at, *str_idle_timeout, *str_last_active;

static Py_ssize_t member_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type)
        return -1;
    PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
    if (def->type != T_OBJECT_EX)
        return -1;
    return def->offset;
}

/* A new reference to one field of a session, or NULL (with an error set). */
static PyObject *session_field(PyObject *s, Py_ssize_t off, PyObject *name)
{
    if (off >= 0 && Py_TYPE(s) == session_type) {
        PyObject *v = *(PyObject **)((char *)s + off);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(s, name);
}

/* An int field as int64; 0 with *ok = 0 when it is not one (or an error is set). */
static long long int_field(PyObject *s, Py_ssize_t off, PyObject *name, int *ok)
{
    PyObject *v = session_field(s, off, name);
    if (v == NULL) {
        *ok = 0;
        return 0;
    }
    long long r = 0;
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        r = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (r == -1 && PyErr_Occurred()))
            *ok = 0;
    } else {
        *ok = 0;
    }
    Py_DECREF(v);
    return r;
}

/*
 * 1: present, not revoked, not expired at now_ms (the rule of Session.is_expired: valid
 * at expires_at exactly; 0 means no limit). 0: anything else, or a field this code does
 * not understand (the Python path decides). -1: an error is set.
 */
static int session_is_valid(PyObject *s, long long now_ms)
{
    PyObject *deleted = session_field(s, off_is_deleted, str_is_deleted);
    if (deleted == NULL)
        goto not_understood;
    int is_false = deleted == Py_False;
    Py_DECREF(deleted);
    if (!is_false)
        return 0;
    int ok = 1;
    long long expires_at = int_field(s, off_expires_at, str_expires_at, &ok);
    if (!ok)
        goto not_understood;
    long long idle = int_field(s, off_idle_timeout, str_idle_timeout, &ok);
    if (!ok)
        goto not_understood;
    long long last_active = int_field(s, off_last_active, str_last_active, &ok);
    if (!ok)
        goto not_understood;
    if (expires_at != 0 && now_ms > expires_at)
        return 0;
    if (idle != 0) {
        long long idle_end;
        if (__builtin_add_overflow(last_active, idle, &idle_end))
            return 0; /* beyond int64: the Python path decides */
        if (now_ms > idle_end)
            return 0;
    }
    return 1;
not_understood:
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
    }
    return 0;
}

/* ---- the frame loop -------------------------------------------------------------------- */

static const char FRAME_HEAD[] = "*2\r\n$11\r\n";
#define FRAME_HEAD_LEN 9
#define NAME_LEN 11
/* Longest token this loop takes; longer ones (never a valid token) go to Python. */
#define MAX_TOKEN 255

static inline int is_validate_name(const char *p)
{
    static const char upper[] = "TM.VALIDATE";
    for (int i = 0; i < NAME_LEN; i++) {
        char ch = p[i];
        if (ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 32);
        if (ch != upper[i])
            return 0;
    }
    return 1;
}

/* The store's maps are segmented (tokmesh/actors/segmented_map.py) and come here as their
   list of dicts: key k lives in the dict at hash(k) & (len - 1), len a power of two. */
static int check_segments(PyObject *segments, const char *usage)
{
    if (PyList_CheckExact(segments)) {
        Py_ssize_t n = PyList_GET_SIZE(segments);
        if (n > 0 && (n & (n - 1)) == 0)
            return 0;
    }
    PyErr_SetString(PyExc_TypeError, usage);
    return -1;
}

static PyObject *segment_of(PyObject *segments, Py_hash_t h)
{
    size_t mask = (size_t)PyList_GET_SIZE(segments) - 1;
    PyObject *seg = PyList_GET_ITEM(segments, (Py_ssize_t)((size_t)h & mask));
    if (!PyDict_CheckExact(seg)) {
        PyErr_SetString(PyExc_TypeError, "a segment is not a dict");
        return NULL;
    }
    return seg;
}

/* Borrowed value of key in a segmented map; NULL when absent (no exception set) or on
   error (exception set). */
static PyObject *map_get(PyObject *segments, PyObject *key)
{
    Py_hash_t h = PyObject_Hash(key);
    if (h == -1)
        return NULL;
    PyObject *seg = segment_of(segments, h);
    if (seg == NULL)
        return NULL;
    return PyDict_GetItemWithError(seg, key);
}

PyDoc_STRVAR(fill_segments_doc,
"fill_segments(segments, items): insert every (key, value) pair of the iterable items\n"
"into the dict segments[hash(key) & (len(segments) - 1)] (len a power of two).");

static PyObject *fill_segments(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fill_segments takes 2 arguments");
        return NULL;
    }
    PyObject *segments = args[0];
    if (check_segments(segments, "fill_segments(list of 2**n dicts, iterable)") < 0)
        return NULL;
    PyObject *it = PyObject_GetIter(args[1]);
    if (it == NULL)
        return NULL;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) {
            Py_DECREF(item);
            Py_DECREF(it);
            PyErr_SetString(PyExc_TypeError, "fill_segments: items must be (key, value) pairs");
            return NULL;
        }
        PyObject *key = PyTuple_GET_ITEM(item, 0);
        Py_hash_t h = PyObject_Hash(key);
        PyObject *seg = h == -1 ? NULL : segment_of(segments, h);
        if (seg == NULL || PyDict_SetItem(seg, key, PyTuple_GET_ITEM(item, 1)) < 0) {
            Py_DECREF(item);
            Py_DECREF(it);
            return NULL;
        }
        Py_DECREF(item);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(index_load_doc,
"index_load(segments, keys, ids, small_max) -> added: IdIndex.load's loop (tokmesh/\n"
"actors/id_index.py): file each id under the key at its position, in the key's segment\n"
"dict, as a bare id, a tuple of up to small_max ids or a set; returns how many ids were\n"
"new.");

static int index_add(PyObject *seg, PyObject *key, PyObject *sid, Py_ssize_t small_max)
{
    /* 1: added, 0: already there, -1: error */
    PyObject *cur = PyDict_GetItemWithError(seg, key); /* borrowed */
    if (cur == NULL) {
        if (PyErr_Occurred())
            return -1;
        return PyDict_SetItem(seg, key, sid) < 0 ? -1 : 1;
    }
    if (PyUnicode_Check(cur)) {
        int eq = PyObject_RichCompareBool(cur, sid, Py_EQ);
        if (eq != 0)
            return eq < 0 ? -1 : 0;
        PyObject *pair = PyTuple_Pack(2, cur, sid);
        if (pair == NULL)
            return -1;
        int rc = PyDict_SetItem(seg, key, pair);
        Py_DECREF(pair);
        return rc < 0 ? -1 : 1;
    }
    if (PyTuple_Check(cur)) {
        int has = PySequence_Contains(cur, sid);
        if (has != 0)
            return has < 0 ? -1 : 0;
        Py_ssize_t n = PyTuple_GET_SIZE(cur);
        PyObject *grown;
        if (n < small_max) {
            grown = PyTuple_New(n + 1);
            if (grown == NULL)
                return -1;
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *x = PyTuple_GET_ITEM(cur, i);
                Py_INCREF(x);
                PyTuple_SET_ITEM(grown, i, x);
            }
            Py_INCREF(sid);
            PyTuple_SET_ITEM(grown, n, sid);
        } else {
            grown = PySet_New(cur);
            if (grown == NULL)
                return -1;
            if (PySet_Add(grown, sid) < 0) {
                Py_DECREF(grown);
                return -1;
            }
        }
        int rc = PyDict_SetItem(seg, key, grown);
        Py_DECREF(grown);
        return rc < 0 ? -1 : 1;
    }
    if (PySet_Check(cur)) {
        int has = PySet_Contains(cur, sid);
        if (has != 0)
            return has < 0 ? -1 : 0;
        return PySet_Add(cur, sid) < 0 ? -1 : 1;
    }
    PyErr_SetString(PyExc_TypeError, "index_load: an index value is not a str, tuple or set");
    return -1;
}

static PyObject *index_load(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "index_load takes 4 arguments");
        return NULL;
    }
    PyObject *segments = args[0];
    if (check_segments(segments, "index_load(list of 2**n dicts, keys, ids, int)") < 0)
        return NULL;
    Py_ssize_t small_max = PyLong_AsSsize_t(args[3]);
    if (small_max == -1 && PyErr_Occurred())
        return NULL;
    PyObject *keys = PySequence_Fast(args[1], "index_load: keys must be iterable");
    if (keys == NULL)
        return NULL;
    PyObject *ids = PySequence_Fast(args[2], "index_load: ids must be iterable");
    if (ids == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);
    Py_ssize_t added = -1;
    if (PySequence_Fast_GET_SIZE(ids) != n) {
        PyErr_SetString(PyExc_ValueError, "index_load: keys and ids differ in length");
        goto done;
    }
    PyObject **key_items = PySequence_Fast_ITEMS(keys);
    PyObject **id_items = PySequence_Fast_ITEMS(ids);
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_hash_t h = PyObject_Hash(key_items[i]);
        if (h == -1)
            goto done;
        PyObject *seg = segment_of(segments, h);
        if (seg == NULL)
            goto done;
        int rc = index_add(seg, key_items[i], id_items[i], small_max);
        if (rc < 0)
            goto done;
        count += rc;
    }
    added = count;
done:
    Py_DECREF(keys);
    Py_DECREF(ids);
    return added < 0 ? NULL : PyLong_FromSsize_t(added);
}

PyDoc_STRVAR(presized_dicts_doc,
"presized_dicts(count, each) -> list: count empty dicts, each with room for each\n"
"entries before its first rebuild.");

static PyObject *presized_dicts(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "presized_dicts takes 2 arguments");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[0]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t each = PyLong_AsSsize_t(args[1]);
    if (each == -1 && PyErr_Occurred())
        return NULL;
    if (count < 0 || each < 0) {
        PyErr_SetString(PyExc_ValueError, "presized_dicts: negative size");
        return NULL;
    }
    PyObject *list = PyList_New(count);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
#if PY_VERSION_HEX < 0x030D0000
        PyObject *d = _PyDict_NewPresized(each);
#else
        /* private from 3.13 on: plain dicts, which grow as they fill */
        PyObject *d = PyDict_New();
        (void)each;
#endif
        if (d == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, d);
    }
    return list;
}

PyDoc_STRVAR(validate_frames_doc,
"validate_frames(data, by_token, sessions, now_ms) -> (count, end)\n\n"
"Answer the leading run of ``TM.VALIDATE token`` frames of ``data``: ``count`` frames,\n"
"``data[:end]``, each naming the token of a valid session (``by_token`` maps token\n"
"SHA-256 digests to session ids, ``sessions`` ids to sessions; each a segmented map's\n"
"list of dicts). Stops before the first frame that is anything else or incomplete.\n"
"Reads the maps, changes nothing.");

static PyObject *validate_frames(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "validate_frames takes 4 arguments");
        return NULL;
    }
    PyObject *data = args[0], *by_token = args[1], *sessions = args[2];
    static const char usage[] = "validate_frames(bytes, segments, segments, int)";
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    if (check_segments(by_token, usage) < 0 || check_segments(sessions, usage) < 0)
        return NULL;
    long long now_ms = PyLong_AsLongLong(args[3]);
    if (now_ms == -1 && PyErr_Occurred())
        return NULL;

    const char *buf = PyBytes_AS_STRING(data);
    const char *end = buf + PyBytes_GET_SIZE(data);
    const char *p = buf;
    const char *done = buf;
    Py_ssize_t count = 0;
    uint8_t digest[32];

    for (;;) {
        /* "*2\r\n$11\r\nTM.VALIDATE\r\n$" then 1-3 digits, "\r\n", token, "\r\n" */
        if (end - p < FRAME_HEAD_LEN + NAME_LEN + 3 + 1 + 2 + 1 + 2)
            break;
        if (memcmp(p, FRAME_HEAD, FRAME_HEAD_LEN) != 0)
            break;
        p += FRAME_HEAD_LEN;
        if (!is_validate_name(p))
            break;
        p += NAME_LEN;
        if (p[0] != '\r' || p[1] != '\n' || p[2] != '$')
            break;
        p += 3;
        size_t len = 0;
        int digits = 0;
        while (p < end && *p >= '0' && *p <= '9' && digits < 4) {
            len = len * 10 + (size_t)(*p - '0');
            p++;
            digits++;
        }
        if (digits == 0 || len == 0 || len > MAX_TOKEN || (digits > 1 && p[-digits] == '0'))
            break;
        if ((size_t)(end - p) < 2 + len + 2)
            break;
        if (p[0] != '\r' || p[1] != '\n')
            break;
        p += 2;
        const uint8_t *token = (const uint8_t *)p;
        p += len;
        if (p[0] != '\r' || p[1] != '\n')
            break;
        p += 2;
        int ascii = 1;
        for (size_t i = 0; i < len; i++)
            ascii &= token[i] < 0x80;
        if (!ascii)
            break; /* malformed: Python says so */

        sha256(token, len, digest);
        PyObject *key = PyBytes_FromStringAndSize((const char *)digest, 32);
        if (key == NULL)
            return NULL;
        PyObject *sid = map_get(by_token, key); /* borrowed */
        Py_DECREF(key);
        if (sid == NULL) {
            if (PyErr_Occurred())
                return NULL;
            break; /* unknown, expired or malformed: Python classifies it */
        }
        Py_INCREF(sid);
        PyObject *s = map_get(sessions, sid); /* borrowed */
        Py_DECREF(sid);
        if (s == NULL) {
            if (PyErr_Occurred())
                return NULL;
            break; /* an orphan index entry: Python drops it */
        }
        Py_INCREF(s);
        int valid = session_is_valid(s, now_ms);
        Py_DECREF(s);
        if (valid < 0)
            return NULL;
        if (!valid)
            break;
        count++;
        done = p;
    }
    return Py_BuildValue("(nn)", count, (Py_ssize_t)(done - buf));
}

PyDoc_STRVAR(sha256_doc, "sha256(data) -> bytes: the SHA-256 digest of a bytes object.");

static PyObject *py_sha256(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint8_t digest[32];
    sha256((const uint8_t *)view.buf, (size_t)view.len, digest);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)digest, 32);
}

PyDoc_STRVAR(configure_doc,
"configure(session_type): read where the fields a validation checks live in a session\n"
"of this (slotted) class; other objects are read with getattr.");

static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyType_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "configure(type)");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)arg;
    Py_INCREF(type);
    Py_XSETREF(session_type, type);
    off_is_deleted = member_offset(type, "is_deleted");
    off_expires_at = member_offset(type, "expires_at");
    off_idle_timeout = member_offset(type, "idle_timeout");
    off_last_active = member_offset(type, "last_active");
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sha_ni_doc,
"sha_ni(enable=None) -> bool: whether SHA-256 uses the CPU's SHA instructions.\n"
"enable=False selects the portable code (tests compare both); True selects the\n"
"instructions when the CPU has them.");

static PyObject *sha_ni(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "sha_ni([enable])");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None) {
        int enable = PyObject_IsTrue(args[0]);
        if (enable < 0)
            return NULL;
        sha256_blocks = sha256_blocks_portable;
#ifdef TM_HAVE_SHA_NI
        if (enable && cpu_has_sha_ni())
            sha256_blocks = sha256_blocks_shani;
#endif
    }
#ifdef TM_HAVE_SHA_NI
    return PyBool_FromLong(sha256_blocks == sha256_blocks_shani);
#else
    return PyBool_FromLong(0);
#endif
}

static PyMethodDef accel_methods[] = {
    {"validate_frames", (PyCFunction)(void (*)(void))validate_frames, METH_FASTCALL,
     validate_frames_doc},
    {"fill_segments", (PyCFunction)(void (*)(void))fill_segments, METH_FASTCALL,
     fill_segments_doc},
    {"index_load", (PyCFunction)(void (*)(void))index_load, METH_FASTCALL, index_load_doc},
    {"presized_dicts", (PyCFunction)(void (*)(void))presized_dicts, METH_FASTCALL,
     presized_dicts_doc},
    {"sha256", py_sha256, METH_O, sha256_doc},
    {"configure", configure, METH_O, configure_doc},
    {"sha_ni", (PyCFunction)(void (*)(void))sha_ni, METH_FASTCALL, sha_ni_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "tokmesh._accel",
    "Compiled loop for runs of RESP TM.VALIDATE (see tokmesh/accel.py).", -1, accel_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__accel(void)
{
    str_is_deleted = PyUnicode_InternFromString("is_deleted");
    str_expires_at = PyUnicode_InternFromString("expires_at");
    str_idle_timeout = PyUnicode_InternFromString("idle_timeout");
    str_last_active = PyUnicode_InternFromString("last_active");
    if (!str_is_deleted || !str_expires_at || !str_idle_timeout || !str_last_active)
        return NULL;
#ifdef TM_HAVE_SHA_NI
    if (cpu_has_sha_ni())
        sha256_blocks = sha256_blocks_shani;
#endif
    return PyModule_Create(&accel_module);
}
