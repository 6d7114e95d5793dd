/* nodecompat.probes._hostc: a probe round's confined host reads in C (issue 11).
 *
 * Hand-written because Python has no openat2(2) binding: the round resolves every host path inside the
 * host root with openat2(root descriptor, path, {flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS}),
 * which Python reached through ctypes (~5 us a call, of which the system call is ~1). This module makes
 * that call, the round's bounded whole-file read (probes/bounded_read.read_whole, ported line for line)
 * and a steady round's batch replay of a probe's logged reads (probes/memo_replay.replay_reads) without
 * a Python object per operation. The GIL is released around every system call, so the runner's
 * watchdog (probes/runner.py) still runs while a read is stuck and abandons the worker as before.
 *
 * Same answers as the Python path it replaces (probes/host_c.py is its wrapper; without a compiler the
 * package installs without this module and the ctypes path is used):
 *   openat2(dirfd, path: bytes, flags, beneath=False) -> descriptor, or -errno (EAGAIN retried twice, as
 *       the ctypes path; a third EAGAIN is returned for the caller to raise NoOpenat2); beneath: resolved
 *       with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS instead (EXDEV for an absolute link or a ".." out of
 *       dirfd: round_paths.py's confined reads then take their walk);
 *   open_text(dirfd, flags, text: str) -> as openat2, `text` encoded as os.fsencode, trailing "/" dropped
 *       ("" -> "/"); ValueError on an embedded NUL; the exception class set by set_retry_error on a third
 *       EAGAIN; dirfd -1 means the host root "/": open(2) of the path, the kernel resolving as chroot;
 *   read_whole(fd, max_bytes) -> bytes, or None (unreadable, a FIFO or socket, over max_bytes); closes fd;
 *   stat_fields(dirfd, path: bytes) -> (mode, ino, dev, nlink, uid, gid, size, mtime_ns, ctime_ns) of
 *       what the path resolves to (openat2 O_PATH + fstat; dirfd -1: stat(2)), or None;
 *   link_name(dirfd, parent: bytes, name: bytes) -> basename of link `name`'s target in directory `parent`
 *       (resolved in the root; dirfd -1: open(2)), or None (RoundHost.link_target_name's answers);
 *   listdir(dirfd, path: bytes, flags, max_entries, max_bytes) -> the directory's names but . and ..,
 *       sorted as str, or None when it cannot be opened or read, or the int 1 when it has more than
 *       max_entries names, 2 when their bytes exceed max_bytes (hostroot.list_names' order of checks):
 *       readdir stops there (getdents in ~32 KB batches), so a hostile directory never costs more than the
 *       bound in memory (probes/host_c.py listing() raises hostroot.ListingTooLarge for it);
 *   replay_reads(dirfd, flags, memo: dict, items: list, max_bytes, state, lookup, file_flags, link_whole)
 *       -> index of the first item whose read differs from its logged answer, or -1; items are (memo key,
 *       path: bytes, answer: bytes | None, parent: str | None, name: bytes). An item already in `memo`
 *       is compared with what the memo holds (no system call); otherwise the file is opened as
 *       memo_replay.replay_reads opens it: by `name` in its parent's held directory (state: the round's
 *       HeldParents.state or None, lookup: its lookup(parent) when the parent is not held yet; a link
 *       there, ELOOP/ENOTDIR, resolved as the whole path when link_whole), nothing for a missing
 *       directory, else the whole path (openat2 in the root, or open(2) at "/" when dirfd is -1), read as
 *       read_whole and compared in C; `memo[key]` is set to the answer when equal, to the bytes read (or
 *       None) at the first difference. A third EAGAIN from openat2 returns that index, memo unset;
 *   log_size(entries, entry_bytes) -> memo_replay.finish's size of a recording's log (its loop in C);
 *   Reader / bind(d, ctx, memo, log, funcs, host, notes): a round host's read_bytes, read_text, read_line,
 *       exists, is_dir, is_file, link_target_name put in its __dict__ as callables answering as round_read
 *       (round_stat for the three stats: RoundHost._stat_memo in C, the round memo's ("s", path) kept alike;
 *       round_link: RoundHost.link_target_name, its ("k", path)) with no Python frame,
 *       the host's own method answering the rest (probes/host_c.py bind says which);
 *   round_read(ctx, memo, path: str, kind, entries) -> a round's read of host file `path` as RoundHost
 *       read_bytes (kind 0: bytes or None), read_text (1: text_of) or read_line (2) answers it, the round's
 *       memo consulted and filled as they do (keys ("b", path), ("t", path), ("1", path)); the file opened
 *       as RoundHost._read opens it (by name in its parent's held directory, HeldParents.lookup when not
 *       held yet, a link there resolved as the whole path when link_whole; nothing for a missing
 *       directory; else the whole path) and read as read_whole. When `entries` is a list, a probe's
 *       recording (probes/probe_memo.py RecordingHost) is noted there in the same call: (fn, (path,),
 *       the bytes answer). ctx: (dirfd, flags, state, lookup, file_flags, link_whole, max_bytes, fn, hint,
 *       kept, hold_at), made once per round host (probes/host_c.py reader): a directory not held yet is
 *       counted here as HeldParents.lookup counts it (state, kept, hint, hold_at: its attributes), lookup
 *       called only for the request that holds it or a directory of the hint. The first line of an ASCII
 *       file is found without decoding the rest. NotImplemented (nothing stored or noted)
 *       for what the Python path answers instead: a path with a NUL, openat2 racing a rename 3 times.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#ifndef HOSTC_SOURCE_CRC32
#define HOSTC_SOURCE_CRC32 "" /* setup.py gives this file's CRC-32 (probes/host_c.py: a stale build is not used) */
#endif

#define FIRST_READ 4096
#define HELD_MISSING (-1) /* held_parents.MISSING: the directory does not resolve */
#define HELD_SLOW (-2)    /* held_parents.SLOW: not held, the whole path is resolved */
#define CHUNK 65536

static PyObject *retry_error = NULL; /* root_resolve.NoOpenat2, set once */

/* openat2 with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS (dirfd >= 0), else open(2) (the host root "/");
 * -errno on failure; EAGAIN (a rename raced a "..") tried three times in all. GIL not held. */
static int open_resolve_nogil(int dirfd, const char *path, int flags, unsigned long long resolve);

static int open_nogil(int dirfd, const char *path, int flags) {
    if (dirfd < 0) {
        int fd = open(path, flags);
        return fd >= 0 ? fd : -errno;
    }
    return open_resolve_nogil(dirfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

/* openat2(dirfd, path, {flags, 0, resolve}); -errno on failure, EAGAIN tried three times. GIL not held. */
static int open_resolve_nogil(int dirfd, const char *path, int flags, unsigned long long resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(unsigned int)flags;
    how.resolve = resolve;
    for (int i = 0; i < 3; i++) {
        long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
        if (fd >= 0)
            return (int)fd;
        if (errno != EAGAIN)
            return -errno;
    }
    return -EAGAIN;
}

/* A read's buffer: a page on the caller's stack first (most host files are shorter: no malloc), moved to
 * the heap when a file is longer. */
typedef struct {
    char *buf;
    size_t cap;
    int heap;
} Buf;

#define BUF_INIT(b, stack) Buf b = {(stack), sizeof(stack), 0}
#define BUF_FREE(b)          \
    do {                     \
        if ((b).heap)        \
            free((b).buf);   \
    } while (0)

static int buf_reserve(Buf *b, size_t need) {
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : FIRST_READ;
    while (cap < need)
        cap *= 2;
    char *p = b->heap ? realloc(b->buf, cap) : malloc(cap);
    if (p == NULL)
        return -1;
    if (!b->heap && b->cap)
        memcpy(p, b->buf, b->cap);
    b->buf = p;
    b->cap = cap;
    b->heap = 1;
    return 0;
}

/* A file without offsets (ESPIPE): FIFOs and sockets refused, anything else read to its end, bounded.
 * bounded_read.read_stream. 0 and *len on success, -1 when the answer is None. GIL not held. */
static int read_stream(int fd, Buf *b, size_t *len, size_t max_bytes) {
    struct stat st;
    if (fstat(fd, &st) != 0 || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))
        return -1;
    size_t total = 0;
    for (;;) {
        size_t ask = CHUNK;
        if (ask > max_bytes + 1 - total)
            ask = max_bytes + 1 - total;
        if (buf_reserve(b, total + ask) != 0)
            return -1;
        ssize_t r = read(fd, b->buf + total, ask);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        total += (size_t)r;
        if (total > max_bytes)
            return -1;
    }
    *len = total;
    return 0;
}

/* bounded_read.read_whole without closing: pread a page at 0, one byte to find the end, the rest as
 * read_rest (fstat's size; procfs past a page read again from 0), ESPIPE -> read_stream.
 * 0 and *len on success, -1 when the answer is None. GIL not held. */
static int read_fd(int fd, Buf *b, size_t *len, size_t max_bytes) {
    if (buf_reserve(b, FIRST_READ) != 0)
        return -1;
    ssize_t n = pread(fd, b->buf, FIRST_READ, 0);
    if (n < 0)
        return errno == ESPIPE ? read_stream(fd, b, len, max_bytes) : -1;
    size_t total = (size_t)n;
    if (total > max_bytes)
        return -1; /* a bound under a page (tests): never more than the bound is answered */
    if (n < FIRST_READ) {
        if (n == 0) {
            *len = 0;
            return 0;
        }
        char one;
        ssize_t r = pread(fd, &one, 1, n);
        if (r < 0)
            return errno == ESPIPE ? read_stream(fd, b, len, max_bytes) : -1;
        if (r == 0) {
            *len = total;
            return 0;
        }
    }
    /* read_rest */
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    size_t size = st.st_size > 0 ? (size_t)st.st_size : 0;
    if (!size && total >= FIRST_READ)
        total = 0; /* procfs past a page: read again from offset 0 */
    size_t want = size + 1 > total ? size + 1 - total : 0;
    if (want < CHUNK)
        want = CHUNK;
    for (;;) {
        size_t ask = want;
        if (ask > max_bytes + 1 - total)
            ask = max_bytes + 1 - total;
        if (buf_reserve(b, total + ask) != 0)
            return -1;
        ssize_t r = pread(fd, b->buf + total, ask, (off_t)total);
        if (r < 0)
            return errno == ESPIPE ? read_stream(fd, b, len, max_bytes) : -1;
        if (r == 0) {
            *len = total;
            return 0;
        }
        total += (size_t)r;
        if (total > max_bytes)
            return -1;
        want = CHUNK;
    }
}

/* The path of `text` as os.fsencode gives it, trailing "/" dropped ("" -> "/"), in `out` (a new
 * reference: bytes) with its start and length; -1 with an exception set. */
static int encode_path(PyObject *text, int strip, PyObject **out) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "path must be str");
        return -1;
    }
    PyObject *raw = PyUnicode_EncodeFSDefault(text);
    if (raw == NULL)
        return -1;
    const char *s = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if ((Py_ssize_t)strlen(s) != n) {
        Py_DECREF(raw);
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return -1;
    }
    if (strip) {
        Py_ssize_t k = n;
        while (k > 0 && s[k - 1] == '/')
            k--;
        if (k != n || n == 0) {
            PyObject *cut = k ? PyBytes_FromStringAndSize(s, k) : PyBytes_FromStringAndSize("/", 1);
            Py_DECREF(raw);
            if (cut == NULL)
                return -1;
            raw = cut;
        }
    }
    *out = raw;
    return 0;
}

static PyObject *py_set_retry_error(PyObject *self, PyObject *arg) {
    Py_XSETREF(retry_error, Py_NewRef(arg));
    Py_RETURN_NONE;
}

static PyObject *py_openat2(PyObject *self, PyObject *args) {
    int dirfd, flags, beneath = 0;
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "iy#i|p", &dirfd, &path, &n, &flags, &beneath))
        return NULL;
    if ((Py_ssize_t)strlen(path) != n) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    if (beneath && dirfd < 0) {
        PyErr_SetString(PyExc_ValueError, "openat2 beneath needs a directory descriptor");
        return NULL;
    }
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = beneath ? open_resolve_nogil(dirfd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
                 : open_nogil(dirfd, path, flags);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(fd);
}

static PyObject *py_open_text(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "open_text(dirfd, flags, text)");
        return NULL;
    }
    long dirfd_l = PyLong_AsLong(args[0]);
    long flags_l = PyLong_AsLong(args[1]);
    if ((dirfd_l == -1 || flags_l == -1) && PyErr_Occurred())
        return NULL;
    int dirfd = (int)dirfd_l, flags = (int)flags_l;
    PyObject *raw;
    if (encode_path(args[2], dirfd >= 0, &raw) != 0)
        return NULL;
    int fd;
    const char *path = PyBytes_AS_STRING(raw);
    Py_BEGIN_ALLOW_THREADS
    fd = open_nogil(dirfd, path, flags);
    Py_END_ALLOW_THREADS
    Py_DECREF(raw);
    if (fd == -EAGAIN && dirfd >= 0 && retry_error != NULL) {
        PyErr_SetNone(retry_error);
        return NULL;
    }
    return PyLong_FromLong(fd);
}

static PyObject *py_read_whole(PyObject *self, PyObject *args) {
    int fd;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "in", &fd, &max_bytes))
        return NULL;
    char first[FIRST_READ];
    BUF_INIT(b, first);
    size_t len = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = read_fd(fd, &b, &len, (size_t)max_bytes);
    close(fd);
    Py_END_ALLOW_THREADS
    PyObject *out;
    if (rc != 0)
        out = Py_NewRef(Py_None);
    else
        out = PyBytes_FromStringAndSize(b.buf, (Py_ssize_t)len);
    BUF_FREE(b);
    return out;
}

static PyObject *fields_of(const struct stat *st) {
    return Py_BuildValue("(KKKKKKLLL)", (unsigned long long)st->st_mode, (unsigned long long)st->st_ino,
                         (unsigned long long)st->st_dev, (unsigned long long)st->st_nlink,
                         (unsigned long long)st->st_uid, (unsigned long long)st->st_gid,
                         (long long)st->st_size,
                         (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec,
                         (long long)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec);
}

static PyObject *py_stat_fields(PyObject *self, PyObject *args) {
    int dirfd;
    const char *path;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "iy#", &dirfd, &path, &n))
        return NULL;
    if ((Py_ssize_t)strlen(path) != n) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    struct stat st;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    if (dirfd < 0) {
        rc = stat(path, &st);
    } else {
        int fd = open_nogil(dirfd, path, O_PATH | O_CLOEXEC);
        if (fd < 0) {
            rc = fd;
        } else {
            rc = fstat(fd, &st);
            close(fd);
        }
    }
    Py_END_ALLOW_THREADS
    if (rc == -EAGAIN && dirfd >= 0 && retry_error != NULL) {
        PyErr_SetNone(retry_error);
        return NULL;
    }
    if (rc != 0)
        Py_RETURN_NONE;
    return fields_of(&st);
}

static PyObject *py_link_name(PyObject *self, PyObject *args) {
    int dirfd;
    const char *parent, *name;
    Py_ssize_t np, nn;
    if (!PyArg_ParseTuple(args, "iy#y#", &dirfd, &parent, &np, &name, &nn))
        return NULL;
    if ((Py_ssize_t)strlen(parent) != np || (Py_ssize_t)strlen(name) != nn) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    char target[PATH_MAX + 1];
    ssize_t n;
    int again = 0;
    Py_BEGIN_ALLOW_THREADS
    int fd = dirfd < 0 ? open(parent, O_PATH | O_DIRECTORY | O_CLOEXEC)
                       : open_nogil(dirfd, parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd == -EAGAIN && dirfd >= 0) {
        again = 1;
        n = -1;
    } else if (fd < 0) {
        n = -1;
    } else {
        n = readlinkat(fd, name, target, PATH_MAX);
        close(fd);
    }
    Py_END_ALLOW_THREADS
    if (again && retry_error != NULL) {
        PyErr_SetNone(retry_error);
        return NULL;
    }
    if (n < 0)
        Py_RETURN_NONE;
    target[n] = 0;
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    return PyUnicode_DecodeFSDefaultAndSize(base, (Py_ssize_t)(target + n - base));
}

static PyObject *py_listdir(PyObject *self, PyObject *args) {
    int dirfd, flags;
    const char *path;
    Py_ssize_t n, max_entries, max_bytes;
    if (!PyArg_ParseTuple(args, "iy#inn", &dirfd, &path, &n, &flags, &max_entries, &max_bytes))
        return NULL;
    if ((Py_ssize_t)strlen(path) != n) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    char **names = NULL;
    size_t count = 0, cap = 0, total = 0;
    int rc = 0, over = 0;
    Py_BEGIN_ALLOW_THREADS
    int fd = open_nogil(dirfd, path, flags | O_DIRECTORY);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (fd < 0) {
        rc = fd;
    } else if (dir == NULL) {
        rc = -errno;
        close(fd);
    } else {
        struct dirent *e;
        errno = 0;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
                continue;
            total += strlen(e->d_name);
            if ((Py_ssize_t)count >= max_entries || (Py_ssize_t)total > max_bytes) {
                over = (Py_ssize_t)count >= max_entries ? 1 : 2; /* the bound: stop reading here */
                break;
            }
            if (count == cap) {
                size_t more = cap ? cap * 2 : 64;
                char **p = realloc(names, more * sizeof *names);
                if (p == NULL) {
                    rc = -ENOMEM;
                    break;
                }
                names = p;
                cap = more;
            }
            if ((names[count] = strdup(e->d_name)) == NULL) {
                rc = -ENOMEM;
                break;
            }
            count++;
            errno = 0;
        }
        if (!rc && !over && errno)
            rc = -errno;
        closedir(dir);
    }
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (rc == -EAGAIN && dirfd >= 0 && retry_error != NULL) {
        PyErr_SetNone(retry_error);
    } else if (rc) {
        out = Py_NewRef(Py_None);
    } else if (over) {
        out = PyLong_FromLong(over);
    } else if ((out = PyList_New((Py_ssize_t)count)) != NULL) {
        for (size_t i = 0; i < count; i++) {
            PyObject *name = PyUnicode_DecodeFSDefault(names[i]);
            if (name == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, (Py_ssize_t)i, name);
        }
        if (out != NULL && PyList_Sort(out) != 0) /* as sorted(os.listdir()): by code point */
            Py_CLEAR(out);
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    return out;
}

static PyObject *py_replay_reads(PyObject *self, PyObject *args) {
    int dirfd, flags, file_flags, link_whole;
    PyObject *memo, *items, *state, *lookup;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "iiO!O!nOOip", &dirfd, &flags, &PyDict_Type, &memo, &PyList_Type, &items,
                          &max_bytes, &state, &lookup, &file_flags, &link_whole))
        return NULL;
    if (state != Py_None && !PyDict_Check(state)) {
        PyErr_SetString(PyExc_TypeError, "state must be a dict or None");
        return NULL;
    }
    char first[FIRST_READ];
    BUF_INIT(b, first);
    Py_ssize_t count = PyList_GET_SIZE(items);
    Py_ssize_t at = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 5 || !PyBytes_Check(PyTuple_GET_ITEM(item, 1)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(item, 4))) {
            PyErr_SetString(PyExc_TypeError, "items are (key, path: bytes, answer, parent: str | None, name: bytes)");
            goto error;
        }
        PyObject *key = PyTuple_GET_ITEM(item, 0);
        PyObject *answer = PyTuple_GET_ITEM(item, 2);
        PyObject *got = PyDict_GetItemWithError(memo, key); /* borrowed */
        if (got != NULL) {                                   /* read this round already: compare only */
            int eq = PyObject_RichCompareBool(got, answer, Py_EQ);
            if (eq < 0)
                goto error;
            if (!eq) {
                at = i;
                break;
            }
            continue;
        }
        if (PyErr_Occurred())
            goto error;
        /* The held directory of the parent (held_parents.py): state[parent], else held.lookup(parent)
         * (counted, held when due), as memo_replay.replay_reads. */
        long d = HELD_SLOW;
        PyObject *parent = PyTuple_GET_ITEM(item, 3);
        if (state != Py_None && parent != Py_None) {
            PyObject *v = PyDict_GetItemWithError(state, parent);
            if (v == NULL && PyErr_Occurred())
                goto error;
            d = v != NULL ? PyLong_AsLong(v) : HELD_SLOW;
            if (d == -1 && PyErr_Occurred())
                goto error;
            if (d < 0 && d != HELD_MISSING) {
                PyObject *r = PyObject_CallOneArg(lookup, parent);
                if (r == NULL)
                    goto error;
                d = PyLong_AsLong(r);
                Py_DECREF(r);
                if (d == -1 && PyErr_Occurred())
                    goto error;
            }
        }
        PyObject *pathobj = PyTuple_GET_ITEM(item, 1);
        PyObject *nameobj = PyTuple_GET_ITEM(item, 4);
        Py_INCREF(pathobj); /* kept while the GIL is released */
        Py_INCREF(nameobj);
        const char *path = PyBytes_AS_STRING(pathobj);
        const char *name = PyBytes_AS_STRING(nameobj);
        size_t len = 0;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        int fd;
        if (d >= 0) { /* by its name in the held directory; a link under a host root: the whole path */
            fd = openat((int)d, name, file_flags);
            if (fd < 0)
                fd = link_whole && (errno == ELOOP || errno == ENOTDIR) ? open_nogil(dirfd, path, flags) : -errno;
        } else if (d == HELD_MISSING) {
            fd = -ENOENT;
        } else {
            fd = open_nogil(dirfd, path, flags);
        }
        if (fd == -EAGAIN && dirfd >= 0) {
            rc = -2; /* the caller resolves it the Python way (NoOpenat2) */
        } else if (fd < 0) {
            rc = -1;
        } else {
            rc = read_fd(fd, &b, &len, (size_t)max_bytes);
            close(fd);
        }
        Py_END_ALLOW_THREADS
        Py_DECREF(pathobj);
        Py_DECREF(nameobj);
        if (rc == -2) {
            at = i; /* not stored: the probe (or the Python replay) reads it itself */
            break;
        }
        int eq;
        if (answer == Py_None)
            eq = rc != 0;
        else if (PyBytes_CheckExact(answer))
            eq = rc == 0 && (size_t)PyBytes_GET_SIZE(answer) == len &&
                 memcmp(PyBytes_AS_STRING(answer), b.buf, len) == 0;
        else
            eq = 0;
        if (eq) {
            if (PyDict_SetItem(memo, key, answer) != 0)
                goto error;
            continue;
        }
        PyObject *value = rc == 0 ? PyBytes_FromStringAndSize(b.buf, (Py_ssize_t)len) : Py_NewRef(Py_None);
        if (value == NULL)
            goto error;
        int bad = PyDict_SetItem(memo, key, value);
        Py_DECREF(value);
        if (bad)
            goto error;
        at = i;
        break;
    }
    BUF_FREE(b);
    return PyLong_FromSsize_t(at);
error:
    BUF_FREE(b);
    return NULL;
}


static PyObject *memo_kb = NULL, *memo_kt = NULL, *memo_k1 = NULL; /* the round memo's key kinds, interned */

/* held_parents.py's states of a directory not held yet (HeldParents.lookup's counting, kept in step with it:
 * host_c.reader checks the constants): _FIRST, asked once; _FIRST - 1, ... asked more often; HOLD_AT. */
#define HELD_FIRST (-3)
#define HELD_HOLD_AT 2

/* HeldParents.lookup(parent) for a read: the held descriptor, HELD_MISSING or HELD_SLOW. The counting of a
 * directory not held yet is done here (state, kept: the round's HeldParents.state and .kept); the Python
 * `lookup` is called only where it decides more (a directory of the hint asked for the first time, the request
 * that holds it, a state this does not know). -2 with an exception set on failure (HELD_SLOW is -2 too: the
 * caller checks PyErr_Occurred). */
static long held_dir(PyObject *state, PyObject *lookup, PyObject *hint, PyObject *kept, long hold_at,
                     PyObject *parent) {
    PyObject *v = PyDict_GetItemWithError(state, parent); /* borrowed */
    long d;
    if (v == NULL) {
        if (PyErr_Occurred())
            return HELD_SLOW;
        int in_hint = PyAnySet_Check(hint) && PySet_GET_SIZE(hint) ? PySet_Contains(hint, parent) : 0;
        if (in_hint < 0)
            return HELD_SLOW;
        if (!in_hint) { /* asked for the first time: counted, not held (the whole path is resolved) */
            PyObject *first = PyLong_FromLong(HELD_FIRST);
            if (first == NULL)
                return HELD_SLOW;
            PyDict_SetItem(state, parent, first); /* on failure the exception tells the caller */
            Py_DECREF(first);
            return HELD_SLOW;
        }
    } else {
        d = PyLong_AsLong(v);
        if (d == -1 && PyErr_Occurred())
            return HELD_SLOW;
        if (d > HELD_FIRST) /* held, missing, or not holdable (SLOW) */
            return d;
        long asked = HELD_FIRST - d + 2; /* this request's number */
        if (asked < hold_at) {
            PyObject *next = PyLong_FromLong(d - 1);
            if (next == NULL)
                return HELD_SLOW;
            int bad = PyDict_SetItem(state, parent, next);
            Py_DECREF(next);
            if (bad)
                return HELD_SLOW;
            if (asked == HELD_HOLD_AT) /* worth holding at once next round (held here at hold_at) */
                PyList_Append(kept, parent);
            return HELD_SLOW;
        }
    }
    PyObject *r = PyObject_CallOneArg(lookup, parent); /* held now (or the hint's): Python decides */
    if (r == NULL)
        return HELD_SLOW;
    d = PyLong_AsLong(r);
    Py_DECREF(r);
    return d;
}

/* The bytes of `path` as os.fsencode gives them: its own characters when ASCII (no copy), else the new bytes
 * object stored in *raw (the caller releases it with Py_XDECREF). 0, or -1 with an exception. */
static int fs_chars(PyObject *path, PyObject **raw, const char **s, Py_ssize_t *n) {
    *raw = NULL;
    if (PyUnicode_IS_ASCII(path)) {
        *s = (const char *)PyUnicode_DATA(path);
        *n = PyUnicode_GET_LENGTH(path);
        return 0;
    }
    if ((*raw = PyUnicode_EncodeFSDefault(path)) == NULL)
        return -1;
    *s = PyBytes_AS_STRING(*raw);
    *n = PyBytes_GET_SIZE(*raw);
    return 0;
}

/* HeldParents' state for the parent of `path` (a plain absolute path, its parent not "/"): the held descriptor
 * or HELD_* count kept in `state` (a dict; anything else: none kept) into *d, left as it is when the parent has
 * none. 0, or -1 with an exception. */
static int held_depth(PyObject *path, PyObject *state, long *d) {
    if (!PyDict_Check(state))
        return 0;
    Py_ssize_t at = PyUnicode_FindChar(path, '/', 0, PyUnicode_GET_LENGTH(path), -1);
    PyObject *parent = at > 0 ? PyUnicode_Substring(path, 0, at) : NULL;
    PyObject *v = parent != NULL ? PyDict_GetItemWithError(state, parent) : NULL;
    Py_XDECREF(parent);
    if (v != NULL)
        *d = PyLong_AsLong(v);
    return PyErr_Occurred() ? -1 : 0;
}

/* The round's held directories for round_read: (state, lookup, hint, kept, hold_at) of its HeldParents. */
typedef struct {
    PyObject *state, *lookup, *hint, *kept;
    long hold_at;
} Held;

/* The bytes a round reads for `path` (RoundHost._read, within None), a new reference (bytes or None);
 * Py_NotImplemented (new reference) when the Python path must answer; NULL with an exception. */
static PyObject *round_read_raw(PyObject *path, int dirfd, int flags, const Held *held, int file_flags,
                                int link_whole, Py_ssize_t max_bytes) {
    PyObject *raw; /* the encoded path when it is not ASCII (os.fsencode's bytes) */
    const char *s;
    Py_ssize_t n;
    if (fs_chars(path, &raw, &s, &n) != 0)
        return NULL;
    if ((Py_ssize_t)strlen(s) != n) { /* a NUL: os.open's ValueError, raised by the Python path */
        Py_XDECREF(raw);
        Py_RETURN_NOTIMPLEMENTED;
    }
    /* held_parents.split: (parent, name) of an absolute path whose last part is a plain name */
    const char *slash = n ? memrchr(s, '/', (size_t)n) : NULL;
    const char *name = slash ? slash + 1 : s;
    int plain = slash != NULL && slash != s && *name && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
                s[0] == '/';
    long d = HELD_SLOW;
    if (plain && held->state != Py_None) {
        Py_ssize_t at = PyUnicode_FindChar(path, '/', 0, PyUnicode_GET_LENGTH(path), -1);
        PyObject *parent = at > 0 ? PyUnicode_Substring(path, 0, at) : NULL;
        if (parent == NULL) {
            Py_XDECREF(raw);
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NOTIMPLEMENTED;
        }
        d = held_dir(held->state, held->lookup, held->hint, held->kept, held->hold_at, parent);
        Py_DECREF(parent);
        if (d == HELD_SLOW && PyErr_Occurred()) {
            Py_XDECREF(raw);
            return NULL;
        }
    }
    /* the whole path: at "/" made absolute (open(2) resolves as chroot), under a host root without its
     * trailing "/" ("" -> "/"), as open_text; on the stack unless it is longer than any path the kernel takes */
    char stack_whole[PATH_MAX + 2];
    char *whole = (size_t)n + 2 <= sizeof stack_whole ? stack_whole : malloc((size_t)n + 2);
    if (whole == NULL) {
        Py_XDECREF(raw);
        return PyErr_NoMemory();
    }
    if (dirfd < 0) {
        size_t k = 0;
        if (s[0] != '/')
            whole[k++] = '/';
        memcpy(whole + k, s, (size_t)n + 1);
    } else {
        Py_ssize_t k = n;
        while (k > 0 && s[k - 1] == '/')
            k--;
        if (k == 0) {
            strcpy(whole, "/");
        } else {
            memcpy(whole, s, (size_t)k);
            whole[k] = 0;
        }
    }
    char first[FIRST_READ];
    BUF_INIT(b, first);
    size_t len = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    int fd;
    if (d >= 0) { /* by its name in the held directory; a link under a host root: the whole path */
        fd = openat((int)d, name, file_flags);
        if (fd < 0)
            fd = link_whole && (errno == ELOOP || errno == ENOTDIR) ? open_nogil(dirfd, whole, flags) : -errno;
    } else if (d == HELD_MISSING) {
        fd = -ENOENT;
    } else {
        fd = open_nogil(dirfd, whole, flags);
    }
    if (fd == -EAGAIN && dirfd >= 0) {
        rc = -2; /* openat2 kept racing a rename: the Python path (NoOpenat2, the descriptor walk) */
    } else if (fd < 0) {
        rc = -1;
    } else {
        rc = read_fd(fd, &b, &len, (size_t)max_bytes);
        close(fd);
    }
    Py_END_ALLOW_THREADS
    if (whole != stack_whole)
        free(whole);
    Py_XDECREF(raw);
    PyObject *out;
    if (rc == -2)
        out = Py_NewRef(Py_NotImplemented);
    else if (rc != 0)
        out = Py_NewRef(Py_None);
    else
        out = PyBytes_FromStringAndSize(b.buf, (Py_ssize_t)len);
    BUF_FREE(b);
    return out;
}

/* bounded_read.text_of: undecodable bytes replaced, universal newlines. A new reference. */
static PyObject *text_of(PyObject *raw) {
    PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), "replace");
    if (text == NULL || PyUnicode_FindChar(text, '\r', 0, PyUnicode_GET_LENGTH(text), 1) < 0)
        return text;
    PyObject *crlf = PyUnicode_FromString("\r\n"), *cr = PyUnicode_FromString("\r"), *lf = PyUnicode_FromString("\n");
    PyObject *one = NULL, *two = NULL;
    if (crlf != NULL && cr != NULL && lf != NULL && (one = PyUnicode_Replace(text, crlf, lf, -1)) != NULL)
        two = PyUnicode_Replace(one, cr, lf, -1);
    Py_XDECREF(crlf);
    Py_XDECREF(cr);
    Py_XDECREF(lf);
    Py_XDECREF(one);
    Py_DECREF(text);
    return two;
}

/* RoundHost.read_line's answer from a text: its first line stripped, "" when it is all blank. */
static PyObject *first_line(PyObject *text) {
    PyObject *stripped = PyObject_CallMethod(text, "strip", NULL);
    if (stripped == NULL || PyUnicode_GET_LENGTH(stripped) == 0)
        return stripped;
    Py_DECREF(stripped);
    PyObject *lines = PyUnicode_Splitlines(text, 0);
    if (lines == NULL)
        return NULL;
    PyObject *out = PyObject_CallMethod(PyList_GET_ITEM(lines, 0), "strip", NULL);
    Py_DECREF(lines);
    return out;
}

/* str.strip()'s whitespace among ASCII characters (Python's _Py_ascii_whitespace) */
static int ascii_space(unsigned char c) { return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20); }
/* str.splitlines()'s line boundaries among ASCII characters (\r\n is \r then \n: the line ends at \r alike) */
static int ascii_break(unsigned char c) { return (c >= 0x0a && c <= 0x0d) || (c >= 0x1c && c <= 0x1e); }

/* first_line(text_of(raw)) for bytes that are all ASCII, without decoding the whole file: text_of's universal
 * newlines only turn \r and \r\n into \n, which end the first line where they did. NULL with no exception
 * set when raw is not all ASCII (the caller decodes it). */
static PyObject *first_line_ascii(PyObject *raw) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw), end = -1, i;
    int blank = 1;
    for (i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 0x80)
            return NULL;
        if (end < 0 && ascii_break(c))
            end = i;
        if (blank && !ascii_space(c))
            blank = 0;
        if (end >= 0 && !blank)
            break; /* the rest cannot change the answer, but must be ASCII: checked below */
    }
    for (; i < n; i++)
        if (p[i] >= 0x80)
            return NULL;
    if (blank)
        return PyUnicode_New(0, 0);
    Py_ssize_t a = 0, z = end < 0 ? n : end;
    while (a < z && ascii_space(p[a]))
        a++;
    while (z > a && ascii_space(p[z - 1]))
        z--;
    return PyUnicode_DecodeASCII((const char *)p + a, z - a, NULL);
}

/* round_read's work: ctx an 11-tuple, memo a dict, entries a list or None (checked by the callers). */
static PyObject *round_read_impl(PyObject *ctx, PyObject *memo, PyObject *path, long kind, PyObject *entries) {
    if (!PyUnicode_CheckExact(path))
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *kkey = kind == 1 ? memo_kt : memo_k1;
    PyObject *bkey = PyTuple_Pack(2, memo_kb, path), *key = NULL, *raw = NULL, *out = NULL;
    if (bkey == NULL)
        return NULL;
    if (kind != 0) { /* the text or line kept this round */
        if ((key = PyTuple_Pack(2, kkey, path)) == NULL)
            goto done;
        PyObject *hit = PyDict_GetItemWithError(memo, key);
        if (hit == NULL && PyErr_Occurred())
            goto done;
        if (hit != NULL) {
            PyObject *got = PyDict_GetItemWithError(memo, bkey);
            if (got == NULL && PyErr_Occurred())
                goto done;
            raw = Py_NewRef(got != NULL ? got : Py_None);
            out = Py_NewRef(hit);
            goto note;
        }
    }
    PyObject *got = PyDict_GetItemWithError(memo, bkey);
    if (got == NULL && PyErr_Occurred())
        goto done;
    if (got != NULL) {
        raw = Py_NewRef(got);
    } else {
        long dirfd = PyLong_AsLong(PyTuple_GET_ITEM(ctx, 0)), flags = PyLong_AsLong(PyTuple_GET_ITEM(ctx, 1));
        long file_flags = PyLong_AsLong(PyTuple_GET_ITEM(ctx, 4));
        int link_whole = PyObject_IsTrue(PyTuple_GET_ITEM(ctx, 5));
        Py_ssize_t max_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(ctx, 6));
        Held held = {PyTuple_GET_ITEM(ctx, 2), PyTuple_GET_ITEM(ctx, 3), PyTuple_GET_ITEM(ctx, 8),
                     PyTuple_GET_ITEM(ctx, 9), PyLong_AsLong(PyTuple_GET_ITEM(ctx, 10))};
        if (PyErr_Occurred())
            goto done;
        if (held.state != Py_None && (!PyDict_Check(held.state) || !PyList_Check(held.kept))) {
            PyErr_SetString(PyExc_TypeError, "round_read: the held directories' state must be a dict, kept a list");
            goto done;
        }
        raw = round_read_raw(path, (int)dirfd, (int)flags, &held, (int)file_flags, link_whole, max_bytes);
        if (raw == NULL)
            goto done;
        if (raw == Py_NotImplemented) {
            out = raw;
            raw = NULL;
            goto done;
        }
        if (PyDict_SetItem(memo, bkey, raw) != 0)
            goto done;
    }
    if (kind == 0) {
        out = Py_NewRef(raw);
    } else {
        if (raw == Py_None) {
            out = Py_NewRef(Py_None);
        } else if (kind == 2 && (out = first_line_ascii(raw)) != NULL) {
            ; /* the first line of an ASCII file, nothing else decoded */
        } else if (PyErr_Occurred()) {
            goto done;
        } else {
            PyObject *text = text_of(raw);
            if (text == NULL)
                goto done;
            if (kind == 1) {
                out = text;
            } else {
                out = first_line(text);
                Py_DECREF(text);
                if (out == NULL)
                    goto done;
            }
        }
        if (PyDict_SetItem(memo, key, out) != 0) {
            Py_CLEAR(out);
            goto done;
        }
    }
note:
    if (entries != Py_None) { /* the recording's entry: (fn, (path,), the bytes) */
        PyObject *entry = Py_BuildValue("(O(O)O)", PyTuple_GET_ITEM(ctx, 7), path, raw);
        if (entry == NULL || PyList_Append(entries, entry) != 0) {
            Py_XDECREF(entry);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(entry);
    }
done:
    Py_XDECREF(raw);
    Py_XDECREF(key);
    Py_DECREF(bkey);
    return out;
}

static PyObject *py_round_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != 11 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "round_read(ctx: tuple of 11, memo: dict, path, kind, entries)");
        return NULL;
    }
    long kind = PyLong_AsLong(args[3]);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    if (args[4] != Py_None && !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "entries must be a list or None");
        return NULL;
    }
    return round_read_impl(args[0], args[1], args[2], kind, args[4]);
}

static PyObject *memo_ks = NULL; /* the round memo's key kind of a stat ("s"), interned */

/* RoundHost._stat_memo's stat of `path`, once a round: the round memo's ("s", path) (an os.stat_result or
 * stat_fields' tuple, st_mode first; None when it does not resolve), else stat'ed as _stat_memo stats it: through
 * its parent's held descriptor when the round holds it (fstatat; under a host root without following a last
 * link, which is then stat'ed by its whole path), None when the parent is known missing, else by the whole path
 * (stat_fields: openat2 O_PATH + fstat in the root, stat(2) at "/"), the parent not counted (as _stat_memo's C
 * path). kind 3: exists, 4: is_dir, 5: is_file; the answer (a bool), or Py_NotImplemented for the Python path
 * (a NUL, openat2 racing a rename). When `entries` is a list the recording's entry (note, (path,), answer) is
 * appended. A new reference, NULL with an exception. */
static PyObject *round_stat_impl(PyObject *ctx, PyObject *memo, PyObject *path, long kind, PyObject *entries,
                                 PyObject *note) {
    PyObject *key = PyTuple_Pack(2, memo_ks, path);
    if (key == NULL)
        return NULL;
    PyObject *value = PyDict_GetItemWithError(memo, key); /* borrowed */
    if (value != NULL) {
        Py_INCREF(value);
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    } else {
        PyObject *raw;
        const char *s;
        Py_ssize_t n;
        if (fs_chars(path, &raw, &s, &n) != 0) {
            Py_DECREF(key);
            return NULL;
        }
        if ((Py_ssize_t)strlen(s) != n || (size_t)n + 2 > PATH_MAX + 2) { /* a NUL, a path too long: Python */
            Py_XDECREF(raw);
            Py_DECREF(key);
            Py_RETURN_NOTIMPLEMENTED;
        }
        long dirfd = PyLong_AsLong(PyTuple_GET_ITEM(ctx, 0));
        int link_whole = PyObject_IsTrue(PyTuple_GET_ITEM(ctx, 5));
        PyObject *state = PyTuple_GET_ITEM(ctx, 2);
        const char *slash = n ? memrchr(s, '/', (size_t)n) : NULL;
        const char *name = slash ? slash + 1 : s;
        int plain = slash != NULL && slash != s && *name && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
                    s[0] == '/';
        long d = HELD_SLOW;
        if (plain && held_depth(path, state, &d) != 0) {
            Py_XDECREF(raw);
            Py_DECREF(key);
            return NULL;
        }
        char whole[PATH_MAX + 2];
        if (dirfd < 0) {
            size_t k = 0;
            if (s[0] != '/')
                whole[k++] = '/';
            memcpy(whole + k, s, (size_t)n + 1);
        } else {
            Py_ssize_t k = n;
            while (k > 0 && s[k - 1] == '/')
                k--;
            if (k == 0) {
                strcpy(whole, "/");
            } else {
                memcpy(whole, s, (size_t)k);
                whole[k] = 0;
            }
        }
        struct stat st;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = 1; /* 1: by the whole path */
        if (d >= 0) {
            rc = fstatat((int)d, name, &st, link_whole ? AT_SYMLINK_NOFOLLOW : 0) == 0 ? 0 : -1;
            if (rc == 0 && link_whole && S_ISLNK(st.st_mode))
                rc = 1; /* a link under a host root: resolved as a whole path, never followed from here */
        } else if (d == HELD_MISSING) {
            rc = -1;
        }
        if (rc == 1) {
            if (dirfd < 0) {
                rc = stat(whole, &st) == 0 ? 0 : -1;
            } else {
                int fd = open_nogil((int)dirfd, whole, O_PATH | O_CLOEXEC);
                if (fd == -EAGAIN) {
                    rc = -2;
                } else if (fd < 0) {
                    rc = -1;
                } else {
                    rc = fstat(fd, &st) == 0 ? 0 : -1;
                    close(fd);
                }
            }
        }
        Py_END_ALLOW_THREADS
        Py_XDECREF(raw);
        if (rc == -2) { /* openat2 kept racing a rename: the Python path (NoOpenat2, the descriptor walk) */
            Py_DECREF(key);
            Py_RETURN_NOTIMPLEMENTED;
        }
        value = rc == 0 ? fields_of(&st) : Py_NewRef(Py_None);
        if (value == NULL || PyDict_SetItem(memo, key, value) != 0) {
            Py_XDECREF(value);
            Py_DECREF(key);
            return NULL;
        }
    }
    Py_DECREF(key);
    int found = value != Py_None;
    if (found && kind != 3) {
        PyObject *mode = PySequence_GetItem(value, 0);
        unsigned long m = mode != NULL ? PyLong_AsUnsignedLong(mode) : 0;
        Py_XDECREF(mode);
        if (PyErr_Occurred()) {
            Py_DECREF(value);
            return NULL;
        }
        found = kind == 4 ? S_ISDIR(m) : S_ISREG(m);
    }
    Py_DECREF(value);
    PyObject *out = PyBool_FromLong(found);
    if (entries != Py_None) { /* the recording's entry: (fn, (path,), the boolean) */
        PyObject *entry = Py_BuildValue("(O(O)O)", note, path, out);
        if (entry == NULL || PyList_Append(entries, entry) != 0) {
            Py_XDECREF(entry);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(entry);
    }
    return out;
}

static PyObject *memo_kk = NULL; /* the round memo's key kind of a link's target name ("k"), interned */

/* RoundHost.link_target_name(path) in C, kind 6: the round memo's ("k", path), else as _link_target_name finds
 * it: a link in a directory the round holds read there (readlinkat on the held descriptor; None for a directory
 * known missing), any other by its whole path (its parent opened in the root: openat2 O_PATH, open(2) at "/",
 * then readlinkat, as link_name); the basename of the target, or None. Py_NotImplemented for the Python path
 * (a NUL, openat2 racing a rename); the recording's entry (note, (path,), answer) appended when `entries` is a
 * list. A new reference, NULL with an exception. */
static PyObject *round_link_impl(PyObject *ctx, PyObject *memo, PyObject *path, PyObject *entries, PyObject *note) {
    PyObject *key = PyTuple_Pack(2, memo_kk, path);
    if (key == NULL)
        return NULL;
    PyObject *value = PyDict_GetItemWithError(memo, key); /* borrowed */
    if (value != NULL) {
        Py_INCREF(value);
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    } else {
        PyObject *raw;
        const char *s;
        Py_ssize_t n;
        if (fs_chars(path, &raw, &s, &n) != 0) {
            Py_DECREF(key);
            return NULL;
        }
        if ((Py_ssize_t)strlen(s) != n || n + 2 > PATH_MAX) { /* a NUL, a path too long: the Python path */
            Py_XDECREF(raw);
            Py_DECREF(key);
            Py_RETURN_NOTIMPLEMENTED;
        }
        long dirfd = PyLong_AsLong(PyTuple_GET_ITEM(ctx, 0));
        PyObject *state = PyTuple_GET_ITEM(ctx, 2);
        /* _c_whole: the parent (of the path as given) neither held nor known missing, or not a plain name */
        const char *slash = n ? memrchr(s, '/', (size_t)n) : NULL;
        const char *name = slash ? slash + 1 : s;
        int plain = slash != NULL && *name && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 && s[0] == '/';
        long d = HELD_SLOW;
        if (plain && slash != s && held_depth(path, state, &d) != 0) {
            Py_XDECREF(raw);
            Py_DECREF(key);
            return NULL;
        }
        char target[PATH_MAX + 1], t[PATH_MAX + 2];
        const char *dir = "/", *link = NULL; /* the parent to open and the name to read there (whole path) */
        int whole = !(plain && slash != s && (d >= 0 || d == HELD_MISSING));
        ssize_t got = -1;
        int again = 0;
        if (whole) { /* as _link_target_name: text.rstrip("/"), made absolute at "/", rpartition("/") */
            Py_ssize_t k = n;
            while (k > 0 && s[k - 1] == '/')
                k--;
            size_t off = 0;
            if (dirfd < 0 && !(k > 0 && s[0] == '/'))
                t[off++] = '/';
            memcpy(t + off, s, (size_t)k);
            t[off + (size_t)k] = 0;
            char *cut = strrchr(t, '/');
            link = cut ? cut + 1 : t;
            if (!*link || strcmp(link, ".") == 0 || strcmp(link, "..") == 0) {
                link = NULL; /* no name: None */
            } else if (cut != NULL) {
                *cut = 0; /* the parent, its trailing "/" dropped ("" -> "/") */
                while (cut > t && cut[-1] == '/')
                    *--cut = 0;
                dir = t[0] ? t : "/";
            }
        }
        Py_BEGIN_ALLOW_THREADS
        if (whole && link != NULL) {
            int fd = dirfd < 0 ? open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC)
                               : open_nogil((int)dirfd, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
            if (fd < 0) {
                again = fd == -EAGAIN && dirfd >= 0;
            } else {
                got = readlinkat(fd, link, target, PATH_MAX);
                close(fd);
            }
        } else if (!whole && d >= 0) {
            got = readlinkat((int)d, name, target, PATH_MAX);
        }
        Py_END_ALLOW_THREADS
        Py_XDECREF(raw);
        if (again) { /* openat2 kept racing a rename: the Python path */
            Py_DECREF(key);
            Py_RETURN_NOTIMPLEMENTED;
        }
        if (got < 0) {
            value = Py_NewRef(Py_None);
        } else {
            target[got] = 0;
            const char *base = strrchr(target, '/');
            base = base ? base + 1 : target;
            value = PyUnicode_DecodeFSDefaultAndSize(base, (Py_ssize_t)(target + got - base));
        }
        if (value == NULL || PyDict_SetItem(memo, key, value) != 0) {
            Py_XDECREF(value);
            Py_DECREF(key);
            return NULL;
        }
    }
    Py_DECREF(key);
    if (entries != Py_None) {
        PyObject *entry = Py_BuildValue("(O(O)O)", note, path, value);
        if (entry == NULL || PyList_Append(entries, entry) != 0) {
            Py_XDECREF(entry);
            Py_DECREF(value);
            return NULL;
        }
        Py_DECREF(entry);
    }
    return value;
}

/* Reader: a round host's read_bytes / read_text / read_line bound to round_read (probes/host_c.py bind),
 * called by a probe with no Python frame: reader(path) is round_read(ctx, memo, path, kind, entries), entries
 * being the recording's log.entries when `log` is a probe_memo._Log whose depth is 0 (None otherwise). Anything
 * else (a keyword such as within=, a path that is not a str, what round_read hands back as NotImplemented)
 * goes to func(host, *args, **kwargs): the host's own Python method (host held by a weak reference, so the
 * reader in the host's __dict__ makes no reference cycle and the round's descriptors close when it goes). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *ctx, *memo, *log, *func, *host_ref, *note; /* note: the recording entry's function (stats) */
    long kind;
} Reader;

static PyObject *str_depth = NULL, *str_entries = NULL;
static PyObject *reader_names[8]; /* bind's keys, interned once: read_bytes ... link_target_name, "_bound" */

static PyObject *reader_fallback(Reader *r, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    PyObject *host = PyWeakref_GetObject(r->host_ref); /* borrowed */
    if (host == NULL)
        return NULL;
    if (host == Py_None) {
        PyErr_SetString(PyExc_ReferenceError, "the round host of this reader is gone");
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8], **all = total + 1 <= 8 ? small : PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
    if (all == NULL)
        return PyErr_NoMemory();
    all[0] = host;
    for (Py_ssize_t i = 0; i < total; i++)
        all[i + 1] = args[i];
    Py_INCREF(host);
    PyObject *out = PyObject_Vectorcall(r->func, all, (size_t)(nargs + 1), kwnames);
    Py_DECREF(host);
    if (all != small)
        PyMem_Free(all);
    return out;
}

static PyObject *reader_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Reader *r = (Reader *)self;
    if (PyVectorcall_NARGS(nargsf) == 1 && kwnames == NULL && PyUnicode_CheckExact(args[0])) {
        PyObject *entries = Py_None;
        if (r->log != Py_None) {
            PyObject *depth = PyObject_GetAttr(r->log, str_depth);
            if (depth == NULL)
                return NULL;
            int nested = PyObject_IsTrue(depth);
            Py_DECREF(depth);
            if (nested < 0)
                return NULL;
            if (!nested) {
                if ((entries = PyObject_GetAttr(r->log, str_entries)) == NULL)
                    return NULL;
                if (!PyList_Check(entries)) {
                    Py_DECREF(entries);
                    PyErr_SetString(PyExc_TypeError, "a recording's entries must be a list");
                    return NULL;
                }
            } else {
                Py_INCREF(entries);
            }
        } else {
            Py_INCREF(entries);
        }
        PyObject *out = r->kind < 3   ? round_read_impl(r->ctx, r->memo, args[0], r->kind, entries)
                        : r->kind < 6 ? round_stat_impl(r->ctx, r->memo, args[0], r->kind, entries, r->note)
                                      : round_link_impl(r->ctx, r->memo, args[0], entries, r->note);
        Py_DECREF(entries);
        if (out != Py_NotImplemented)
            return out;
        Py_DECREF(out);
    }
    return reader_fallback(r, args, nargsf, kwnames);
}

static int reader_traverse(PyObject *self, visitproc visit, void *arg) {
    Reader *r = (Reader *)self;
    Py_VISIT(r->ctx);
    Py_VISIT(r->memo);
    Py_VISIT(r->log);
    Py_VISIT(r->func);
    Py_VISIT(r->host_ref);
    Py_VISIT(r->note);
    return 0;
}

static int reader_clear(PyObject *self) {
    Reader *r = (Reader *)self;
    Py_CLEAR(r->ctx);
    Py_CLEAR(r->memo);
    Py_CLEAR(r->log);
    Py_CLEAR(r->func);
    Py_CLEAR(r->host_ref);
    Py_CLEAR(r->note);
    return 0;
}

static void reader_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    reader_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *ctx, *memo, *log, *func, *host;
    long kind;
    if (!PyArg_ParseTuple(args, "O!O!lOOO:Reader", &PyTuple_Type, &ctx, &PyDict_Type, &memo, &kind, &log, &func,
                          &host))
        return NULL;
    if (PyTuple_GET_SIZE(ctx) != 11 || kind < 0 || kind > 2) {
        PyErr_SetString(PyExc_ValueError, "Reader(ctx: tuple of 11, memo, kind 0-2, log, func, host)");
        return NULL;
    }
    PyObject *ref = PyWeakref_NewRef(host, NULL);
    if (ref == NULL)
        return NULL;
    Reader *r = (Reader *)type->tp_alloc(type, 0);
    if (r == NULL) {
        Py_DECREF(ref);
        return NULL;
    }
    r->vectorcall = reader_call;
    r->ctx = Py_NewRef(ctx);
    r->memo = Py_NewRef(memo);
    r->log = Py_NewRef(log);
    r->func = Py_NewRef(func);
    r->host_ref = ref;
    r->note = Py_NewRef(Py_None);
    r->kind = kind;
    return (PyObject *)r;
}

static PyObject *reader_name(PyObject *self, void *closure) {
    static const char *names[] = {"read_bytes", "read_text", "read_line", "exists", "is_dir", "is_file",
                                  "link_target_name"};
    return PyUnicode_FromString(names[((Reader *)self)->kind]);
}

static PyGetSetDef reader_getset[] = {
    {"__name__", reader_name, NULL, "the host method this reader stands for", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nodecompat.probes._hostc.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Reader(ctx, memo, kind, log, func, host): a round host's read method in C (round_read)",
    .tp_new = reader_new,
    .tp_dealloc = reader_dealloc,
    .tp_traverse = reader_traverse,
    .tp_clear = reader_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Reader, vectorcall),
    .tp_getset = reader_getset,
};

/* bind(d, ctx, memo, log, funcs, host, notes): Readers of `host` (kinds 0-5: read_bytes, read_text, read_line,
 * exists, is_dir, is_file) put in its __dict__ `d` for each function of the 6-tuple funcs that is not None (one
 * weak reference to host shared; notes[kind]: a stat's recording entry function), and d["_bound"] = True
 * (probes/host_c.py bind). */
static PyObject *py_bind(PyObject *self, PyObject *args) {
    PyObject *d, *ctx, *memo, *log, *funcs, *host, *notes;
    if (!PyArg_ParseTuple(args, "O!O!O!OO!OO!:bind", &PyDict_Type, &d, &PyTuple_Type, &ctx, &PyDict_Type, &memo, &log,
                          &PyTuple_Type, &funcs, &host, &PyTuple_Type, &notes))
        return NULL;
    if (PyTuple_GET_SIZE(ctx) != 11 || PyTuple_GET_SIZE(funcs) != 7 || PyTuple_GET_SIZE(notes) != 7) {
        PyErr_SetString(PyExc_ValueError, "bind(d, ctx: tuple of 11, memo, log, funcs: 7, host, notes: 7)");
        return NULL;
    }
    PyObject *ref = PyWeakref_NewRef(host, NULL);
    if (ref == NULL)
        return NULL;
    for (long kind = 0; kind < 7; kind++) {
        PyObject *func = PyTuple_GET_ITEM(funcs, kind);
        if (func == Py_None)
            continue;
        Reader *r = PyObject_GC_New(Reader, &ReaderType);
        if (r == NULL)
            goto error;
        r->vectorcall = reader_call;
        r->ctx = Py_NewRef(ctx);
        r->memo = Py_NewRef(memo);
        r->log = Py_NewRef(log);
        r->func = Py_NewRef(func);
        r->host_ref = Py_NewRef(ref);
        r->note = Py_NewRef(PyTuple_GET_ITEM(notes, kind));
        r->kind = kind;
        PyObject_GC_Track((PyObject *)r);
        int bad = PyDict_SetItem(d, reader_names[kind], (PyObject *)r);
        Py_DECREF(r);
        if (bad)
            goto error;
    }
    Py_DECREF(ref);
    if (PyDict_SetItem(d, reader_names[7], Py_True) != 0)
        return NULL;
    Py_RETURN_NONE;
error:
    Py_DECREF(ref);
    return NULL;
}

/* log_size(entries, entry_bytes) -> memo_replay.finish's count of a recording's log, in bytes: entry_bytes per
 * entry, plus each answer's len() when it is bytes or str, 8 per name plus the names' len() when a list, else
 * len(args[2]) when the operation's third argument is bytes (memo_derived: the bytes a value came from). The
 * same sum as the Python loop it replaces (a round's ~400 entries counted without a bytecode per entry). */
static PyObject *py_log_size(PyObject *self, PyObject *args) {
    PyObject *entries;
    Py_ssize_t entry_bytes;
    if (!PyArg_ParseTuple(args, "O!n:log_size", &PyList_Type, &entries, &entry_bytes))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(entries), size = entry_bytes * count;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(entries, i);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_TypeError, "a log entry is (fn, args, answer)");
            return NULL;
        }
        PyObject *fn_args = PyTuple_GET_ITEM(entry, 1), *answer = PyTuple_GET_ITEM(entry, 2);
        if (PyBytes_CheckExact(answer)) {
            size += PyBytes_GET_SIZE(answer);
        } else if (PyUnicode_CheckExact(answer)) {
            size += PyUnicode_GET_LENGTH(answer);
        } else if (PyList_CheckExact(answer)) {
            Py_ssize_t n = PyList_GET_SIZE(answer);
            size += 8 * n;
            for (Py_ssize_t k = 0; k < n; k++) {
                Py_ssize_t len = PyObject_Length(PyList_GET_ITEM(answer, k));
                if (len < 0)
                    return NULL;
                size += len;
            }
        } else {
            Py_ssize_t nargs = PyObject_Length(fn_args);
            if (nargs < 0)
                return NULL;
            if (nargs > 2) {
                PyObject *third = PySequence_GetItem(fn_args, 2);
                if (third == NULL)
                    return NULL;
                if (PyBytes_CheckExact(third))
                    size += PyBytes_GET_SIZE(third);
                Py_DECREF(third);
            }
        }
    }
    return PyLong_FromSsize_t(size);
}

static PyMethodDef methods[] = {
    {"openat2", py_openat2, METH_VARARGS,
     "openat2(dirfd, path, flags, beneath=False) -> fd or -errno (RESOLVE_IN_ROOT, or RESOLVE_BENEATH)"},
    {"open_text", (PyCFunction)(void (*)(void))py_open_text, METH_FASTCALL,
     "open_text(dirfd, flags, text) -> fd or -errno"},
    {"read_whole", py_read_whole, METH_VARARGS, "read_whole(fd, max_bytes) -> bytes or None; closes fd"},
    {"stat_fields", py_stat_fields, METH_VARARGS, "stat_fields(dirfd, path) -> 9 stat fields or None"},
    {"replay_reads", py_replay_reads, METH_VARARGS,
     "replay_reads(dirfd, flags, memo, items, max_bytes, state, lookup, file_flags, link_whole) -> first differing index or -1"},
    {"link_name", py_link_name, METH_VARARGS, "link_name(dirfd, parent, name) -> basename of the link's target or None"},
    {"listdir", py_listdir, METH_VARARGS,
     "listdir(dirfd, path, flags, max_entries, max_bytes) -> sorted names, None, or 1/2 past a bound"},
    {"round_read", (PyCFunction)(void (*)(void))py_round_read, METH_FASTCALL,
     "round_read(ctx, memo, path, kind, entries) -> a round's read (bytes, text or first line)"},
    {"bind", py_bind, METH_VARARGS, "bind(d, ctx, memo, log, funcs, host): a host's read methods bound to round_read"},
    {"log_size", py_log_size, METH_VARARGS, "log_size(entries, entry_bytes) -> a recording's size (memo_replay.finish)"},
    {"set_retry_error", py_set_retry_error, METH_O, "the exception raised after three EAGAINs"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hostc", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hostc(void) {
    if ((memo_kb = PyUnicode_InternFromString("b")) == NULL || (memo_kt = PyUnicode_InternFromString("t")) == NULL ||
        (memo_k1 = PyUnicode_InternFromString("1")) == NULL || (memo_ks = PyUnicode_InternFromString("s")) == NULL ||
        (memo_kk = PyUnicode_InternFromString("k")) == NULL || (str_depth = PyUnicode_InternFromString("depth")) == NULL ||
        (str_entries = PyUnicode_InternFromString("entries")) == NULL || PyType_Ready(&ReaderType) != 0)
        return NULL;
    static const char *bind_names[] = {"read_bytes", "read_text", "read_line",        "exists",
                                       "is_dir",     "is_file",   "link_target_name", "_bound"};
    for (int i = 0; i < 8; i++)
        if ((reader_names[i] = PyUnicode_InternFromString(bind_names[i])) == NULL)
            return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "RESOLVE_IN_ROOT", RESOLVE_IN_ROOT) != 0 ||
        PyModule_AddIntConstant(m, "RESOLVE_NO_MAGICLINKS", RESOLVE_NO_MAGICLINKS) != 0 ||
        PyModule_AddStringConstant(m, "SOURCE_CRC32", HOSTC_SOURCE_CRC32) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
