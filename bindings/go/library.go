package fpl

// How the package finds libfpl: not at build time (no pkg-config, no
// -lfpl: building needs cgo and the C library only) but on first use,
// with dlopen, the way the Python bindings do. Each libfpl function is
// resolved with dlsym and called through a small C trampoline, since cgo
// cannot call a C function pointer itself.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include "fpl.h"

// dlopen (or dlsym) and dlerror in one call from Go, so that both run on
// the same thread: dlerror's state is per thread, and a goroutine may move
// to another thread between two cgo calls.
static void *fplgo_dlopen(const char *file, char *why, size_t size) {
	void *handle = dlopen(file, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		const char *e = dlerror();
		snprintf(why, size, "%s", e != NULL ? e : "dlopen failed");
	}
	return handle;
}

static void *fplgo_dlsym(void *handle, const char *name, char *why, size_t size) {
	dlerror();
	void *f = dlsym(handle, name);
	if (f == NULL) {
		const char *e = dlerror();
		snprintf(why, size, "%s", e != NULL ? e : "dlsym found NULL");
	}
	return f;
}

static void fplgo_dlclose(void *handle) { dlclose(handle); }

// Each trampoline calls F, what dlsym found for the function it is named
// after, with the prototype fpl.h declares for it (__typeof__ of the
// declaration: a prototype that changes in the header cannot be called
// with a stale copy of it).
#define FPLGO_CALL(name, f) ((__typeof__(&name))(f))

static int fplgo_acquire(void *f, const char *path, uint32_t perm, uint32_t shared,
                         uint32_t flags, fpl_lock **out, fpl_error *err) {
	return FPLGO_CALL(fpl_acquire, f)(path, perm, shared, flags, out, err);
}

static int fplgo_acquire_wait(void *f, const char *path, uint32_t perm, uint32_t shared,
                              uint32_t flags, uint32_t timeout_ms, fpl_lock **out,
                              fpl_error *err) {
	return FPLGO_CALL(fpl_acquire_wait, f)(path, perm, shared, flags, timeout_ms, out, err);
}

static int fplgo_acquire_fd(void *f, int fd, uint32_t perm, uint32_t shared,
                            uint32_t flags, fpl_lock **out, fpl_error *err) {
	return FPLGO_CALL(fpl_acquire_fd, f)(fd, perm, shared, flags, out, err);
}

static int fplgo_update(void *f, fpl_lock *lock, uint32_t perm, uint32_t shared,
                        uint32_t flags, fpl_error *err) {
	return FPLGO_CALL(fpl_update, f)(lock, perm, shared, flags, err);
}

static int fplgo_release(void *f, fpl_lock *lock) {
	return FPLGO_CALL(fpl_release, f)(lock);
}

static int fplgo_check(void *f, const char *path, uint32_t perm, uint32_t shared,
                       uint32_t flags, fpl_error *err) {
	return FPLGO_CALL(fpl_check, f)(path, perm, shared, flags, err);
}

static int fplgo_query(void *f, const char *path, uint32_t flags, fpl_status *status,
                       fpl_holder *holders, size_t cap, fpl_error *err) {
	return FPLGO_CALL(fpl_query, f)(path, flags, status, holders, cap, err);
}

static int fplgo_query_many(void *f, const char *const *paths, size_t n, uint32_t flags,
                            fpl_status *statuses, int32_t *results, fpl_holder *holders,
                            size_t cap, size_t *n_holders, fpl_error *err) {
	return FPLGO_CALL(fpl_query_many, f)(paths, n, flags, statuses, results, holders,
	                                     cap, n_holders, err);
}

static int fplgo_chain(void *f, const char *path, uint32_t perm, uint32_t shared,
                       uint32_t flags, fpl_member *members, size_t cap, size_t *n_members,
                       fpl_error *err) {
	return FPLGO_CALL(fpl_chain, f)(path, perm, shared, flags, members, cap, n_members, err);
}

static int fplgo_verify(void *f, const fpl_lock *lock, fpl_error *err) {
	return FPLGO_CALL(fpl_verify, f)(lock, err);
}

static const char *fplgo_version(void *f) {
	return FPLGO_CALL(fpl_version, f)();
}
*/
import "C"

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// major is the ABI these bindings speak, the major version of the fpl.h
// they were built with; soname the library that has it, libfpl.so.1.
var (
	major  = strconv.Itoa(C.FPL_VERSION_MAJOR)
	soname = "libfpl.so." + major
)

// ErrNotInstalled is what every call returns, wrapped, when libfpl cannot
// be loaded: errors.Is(err, fpl.ErrNotInstalled). The error's message says
// which library was tried, what dlopen said and what to install.
var ErrNotInstalled = errors.New("fpl: libfpl is not installed")

// notInstalled is the error of a process that could not load libfpl.
type notInstalled struct {
	problem string
}

func (e *notInstalled) Error() string {
	return "fpl: " + e.problem + "; install libfpl (" + soname +
		": make install, then ldconfig) or set FPL_LIBRARY to the path of " + soname
}

func (e *notInstalled) Unwrap() error { return ErrNotInstalled }

// library is a loaded libfpl: the address of each function it exports.
type library struct {
	name string // what was given to dlopen
	sym  struct {
		acquire, acquireFD, update, release, check, query, queryMany, chain, verify, version unsafe.Pointer
		// Added in 1.1 (fpl_acquire_wait@@LIBFPL_1.1): nil with a 1.0
		// library, which is still used for everything else.
		acquireWait unsafe.Pointer
	}
}

var (
	loadOnce sync.Once
	loaded   *library
	loadErr  error
)

// libfpl loads libfpl on the first call, from any number of goroutines at
// once, and gives every later call the same answer: the library, or why
// it could not be loaded.
func libfpl() (*library, error) {
	loadOnce.Do(func() { loaded, loadErr = load() })
	return loaded, loadErr
}

// Load loads libfpl now, if no call has yet, and tells whether it could:
// nil, or an error wrapping ErrNotInstalled. Every other function loads it
// on first use; Load lets a program say at startup what is missing. The
// library is the file named by the environment variable FPL_LIBRARY if it
// is set and not empty, else libfpl.so.1 wherever the dynamic loader finds it
// (LD_LIBRARY_PATH, the ld.so cache: make install, then ldconfig). The
// first attempt decides for the life of the process.
func Load() error {
	_, err := libfpl()
	return err
}

func load() (*library, error) {
	name, explicit := os.LookupEnv("FPL_LIBRARY")
	if !explicit || name == "" {
		// An explicit choice is never silently replaced by another library;
		// without one, the loader's own search.
		name, explicit = soname, false
	}
	var why [512]C.char
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	handle := C.fplgo_dlopen(cname, &why[0], C.size_t(len(why)))
	if handle == nil {
		what := "cannot load " + soname
		if explicit {
			what = "cannot load FPL_LIBRARY=" + name
		}
		return nil, &notInstalled{what + " (dlopen: " + C.GoString(&why[0]) + ")"}
	}
	l := &library{name: name}
	for _, s := range []struct {
		name string
		addr *unsafe.Pointer
	}{
		{"fpl_acquire", &l.sym.acquire},
		{"fpl_acquire_fd", &l.sym.acquireFD},
		{"fpl_update", &l.sym.update},
		{"fpl_release", &l.sym.release},
		{"fpl_check", &l.sym.check},
		{"fpl_query", &l.sym.query},
		{"fpl_query_many", &l.sym.queryMany},
		{"fpl_chain", &l.sym.chain},
		{"fpl_verify", &l.sym.verify},
		{"fpl_version", &l.sym.version},
	} {
		csym := C.CString(s.name)
		*s.addr = C.fplgo_dlsym(handle, csym, &why[0], C.size_t(len(why)))
		C.free(unsafe.Pointer(csym))
		if *s.addr == nil {
			C.fplgo_dlclose(handle)
			return nil, &notInstalled{name + " has no " + s.name + " (dlsym: " +
				C.GoString(&why[0]) + "): it is not libfpl " + major + "." +
				strconv.Itoa(C.FPL_VERSION_MINOR) + " or newer"}
		}
	}
	// 1.1's additions are optional: a 1.0 library works for the rest.
	cwait := C.CString("fpl_acquire_wait")
	l.sym.acquireWait = C.fplgo_dlsym(handle, cwait, &why[0], C.size_t(len(why)))
	C.free(unsafe.Pointer(cwait))
	// A library of another ABI has other structures: refuse it by name
	// rather than let it write past them.
	if v := l.version(); !strings.HasPrefix(v, major+".") {
		C.fplgo_dlclose(handle)
		return nil, &notInstalled{name + " is libfpl " + v + ", not a " + soname}
	}
	return l, nil
}

func (l *library) acquire(path *C.char, perm, shared, flags C.uint32_t, out **C.fpl_lock, err *C.fpl_error) C.int {
	return C.fplgo_acquire(l.sym.acquire, path, perm, shared, flags, out, err)
}

func (l *library) acquireWait(path *C.char, perm, shared, flags, timeoutMS C.uint32_t, out **C.fpl_lock, err *C.fpl_error) C.int {
	return C.fplgo_acquire_wait(l.sym.acquireWait, path, perm, shared, flags, timeoutMS, out, err)
}

func (l *library) acquireFD(fd C.int, perm, shared, flags C.uint32_t, out **C.fpl_lock, err *C.fpl_error) C.int {
	return C.fplgo_acquire_fd(l.sym.acquireFD, fd, perm, shared, flags, out, err)
}

func (l *library) update(lock *C.fpl_lock, perm, shared, flags C.uint32_t, err *C.fpl_error) C.int {
	return C.fplgo_update(l.sym.update, lock, perm, shared, flags, err)
}

func (l *library) release(lock *C.fpl_lock) C.int {
	return C.fplgo_release(l.sym.release, lock)
}

func (l *library) check(path *C.char, perm, shared, flags C.uint32_t, err *C.fpl_error) C.int {
	return C.fplgo_check(l.sym.check, path, perm, shared, flags, err)
}

func (l *library) query(path *C.char, flags C.uint32_t, status *C.fpl_status, holders *C.fpl_holder, capacity C.size_t, err *C.fpl_error) C.int {
	return C.fplgo_query(l.sym.query, path, flags, status, holders, capacity, err)
}

func (l *library) queryMany(paths **C.char, n C.size_t, flags C.uint32_t, statuses *C.fpl_status, results *C.int32_t,
	holders *C.fpl_holder, capacity C.size_t, nHolders *C.size_t, err *C.fpl_error) C.int {
	return C.fplgo_query_many(l.sym.queryMany, paths, n, flags, statuses, results, holders, capacity, nHolders, err)
}

func (l *library) chain(path *C.char, perm, shared, flags C.uint32_t, members *C.fpl_member, capacity C.size_t, n *C.size_t, err *C.fpl_error) C.int {
	return C.fplgo_chain(l.sym.chain, path, perm, shared, flags, members, capacity, n, err)
}

func (l *library) verify(lock *C.fpl_lock, err *C.fpl_error) C.int {
	return C.fplgo_verify(l.sym.verify, lock, err)
}

func (l *library) version() string {
	return C.GoString(C.fplgo_version(l.sym.version))
}
