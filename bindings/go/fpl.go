// Package fpl takes, changes, tests and inspects the locks QEMU puts on disk
// images (its file-posix byte-range locking protocol), exactly as QEMU does,
// and names the processes holding an image. It wraps libfpl, found with
// pkg-config: install libfpl first (make install).
//
//	lock, err := fpl.Acquire("vm.qcow2", fpl.Write)
//	if errors.Is(err, syscall.EAGAIN) {
//		// in use: err is an *fpl.Error with QEMU's message and the holder
//	}
//	defer lock.Release()
package fpl

/*
#cgo pkg-config: fpl
#include <stdlib.h>
#include <fpl.h>
*/
import "C"

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"syscall"
	"unsafe"
)

// Perm is a set of QEMU's permissions: bit i is byte 100+i ("I use it") or
// 200+i ("I do not share it").
type Perm uint32

// QEMU's permissions.
const (
	PermConsistentRead Perm = C.FPL_PERM_CONSISTENT_READ
	PermWrite          Perm = C.FPL_PERM_WRITE
	PermWriteUnchanged Perm = C.FPL_PERM_WRITE_UNCHANGED
	PermResize         Perm = C.FPL_PERM_RESIZE
	PermAll            Perm = C.FPL_PERM_ALL
)

// Mode is what a lock asks for: the permissions it uses, those it lets
// others use, and how the protocol is applied.
type Mode struct {
	Perm   Perm
	Shared Perm
	// Exact locks and tests byte for byte what QEMU would, instead of the
	// strict rules for new software.
	Exact bool
	// AllowPOSIX falls back to process-wide POSIX locks on kernels without
	// OFD locks (with their hazard: any close of the image in the process
	// drops them).
	AllowPOSIX bool
}

// The presets, as the fpl command names them.
var (
	// ReadShared reads, sharing everything, like qemu-img -U.
	ReadShared = Mode{Perm: C.FPL_MODE_READ_SHARED_PERM, Shared: C.FPL_MODE_READ_SHARED_SHARE}
	// Read reads a stable image: nobody may write or resize it meanwhile.
	Read = Mode{Perm: C.FPL_MODE_READ_PERM, Shared: C.FPL_MODE_READ_SHARE}
	// Write reads, writes and resizes; others may only read, as with a VM's disk.
	Write = Mode{Perm: C.FPL_MODE_WRITE_PERM, Shared: C.FPL_MODE_WRITE_SHARE}
	// Exclusive reads, writes and resizes, sharing nothing.
	Exclusive = Mode{Perm: C.FPL_MODE_EXCLUSIVE_PERM, Shared: C.FPL_MODE_EXCLUSIVE_SHARE}
)

func (m Mode) flags() C.uint32_t {
	var f C.uint32_t
	if m.Exact {
		f |= C.FPL_FLAG_EXACT
	}
	if m.AllowPOSIX {
		f |= C.FPL_FLAG_ALLOW_POSIX
	}
	return f
}

// Error is a failed libfpl call. It wraps the errno: errors.Is(err,
// syscall.EAGAIN) is a conflict with another holder, errors.Is(err,
// fs.ErrNotExist) a missing image.
type Error struct {
	Op    string // "acquire", "update", "release", "check" or "query"
	Path  string // the image, "" for a lock taken on a descriptor
	Errno syscall.Errno
	// For a conflict: the permission in conflict, the lock byte (e.g. 201)
	// and a process holding it (0 if it cannot be seen: another host, PID
	// namespace or user).
	Perm   Perm
	Byte   uint32
	Holder int
	// libfpl's message; for a conflict QEMU's: `Failed to get "write" lock
	// (held by qemu-io, pid 4410)`, a newline, `Is another process using
	// the image [PATH]?`.
	Message string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return "fpl " + e.Op + " " + e.Path + ": " + e.Errno.Error()
}

// Unwrap gives the errno, for errors.Is.
func (e *Error) Unwrap() error { return e.Errno }

func newError(op, path string, rc C.int, err *C.fpl_error) error {
	e := &Error{Op: op, Path: path, Errno: syscall.Errno(-rc)}
	if err != nil {
		e.Perm = Perm(err.perm)
		e.Byte = uint32(err.byte)
		if err.holder_pid > 0 {
			e.Holder = int(err.holder_pid)
		}
		e.Message = C.GoString(&err.message[0])
	}
	return e
}

// ErrReleased is returned for a lock used after Release.
var ErrReleased = errors.New("fpl: lock already released")

// Lock is QEMU's locks on one image, held until Release. It has a
// close-on-exec descriptor of its own. Its methods may be called from
// several goroutines.
type Lock struct {
	mu   sync.Mutex
	c    *C.fpl_lock
	path string
	mode Mode
}

func newLock(c *C.fpl_lock, path string, mode Mode) *Lock {
	l := &Lock{c: c, path: path, mode: mode}
	// Like an *os.File, a lock that is no longer reachable is released.
	runtime.SetFinalizer(l, (*Lock).Release)
	return l
}

// Acquire opens path read-only and takes QEMU's locks for mode: lock, test,
// roll back on conflict. A conflict is an *Error wrapping syscall.EAGAIN,
// with nothing left held.
func Acquire(path string, mode Mode) (*Lock, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var c *C.fpl_lock
	var err C.fpl_error
	if rc := C.fpl_acquire(cpath, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &c, &err); rc != 0 {
		return nil, newError("acquire", path, rc, &err)
	}
	return newLock(c, path, mode), nil
}

// AcquireFile takes the locks on the open file description of f (opened for
// reading). The lock keeps its own duplicate of the descriptor, so closing
// f does not release it.
func AcquireFile(f *os.File, mode Mode) (*Lock, error) {
	var c *C.fpl_lock
	var err C.fpl_error
	rc := C.fpl_acquire_fd(C.int(f.Fd()), C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &c, &err)
	runtime.KeepAlive(f)
	if rc != 0 {
		return nil, newError("acquire", f.Name(), rc, &err)
	}
	return newLock(c, f.Name(), mode), nil
}

// Update changes the lock to mode (QEMU's prepare / commit / abort). On
// failure the lock is left exactly as it was; loosening never conflicts.
func (l *Lock) Update(mode Mode) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c == nil {
		return ErrReleased
	}
	var err C.fpl_error
	if rc := C.fpl_update(l.c, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &err); rc != 0 {
		return newError("update", l.path, rc, &err)
	}
	l.mode = mode
	return nil
}

// Mode is what the lock holds now.
func (l *Lock) Mode() Mode {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mode
}

// Release unlocks every byte the lock took and closes its descriptor. A
// second Release returns ErrReleased.
func (l *Lock) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c == nil {
		return ErrReleased
	}
	rc := C.fpl_release(l.c)
	l.c = nil
	runtime.SetFinalizer(l, nil)
	if rc != 0 {
		return newError("release", l.path, rc, nil)
	}
	return nil
}

// Check tells whether Acquire(path, mode) would succeed now, taking
// nothing: nil if it would, else the error Acquire would return.
func Check(path string, mode Mode) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var err C.fpl_error
	if rc := C.fpl_check(cpath, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &err); rc != 0 {
		return newError("check", path, rc, &err)
	}
	return nil
}

// StatusFlag is a fact a query found besides the held bytes.
type StatusFlag uint32

// The flags of Status.
const (
	// Legacy: byte 104 or 204 is held (QEMU 6.2 or older).
	Legacy StatusFlag = C.FPL_STATUS_LEGACY
	// Libvirt: byte 0 is held (a virtlockd lease).
	Libvirt StatusFlag = C.FPL_STATUS_LIBVIRT
	// HoldersPartial: some processes could not be inspected.
	HoldersPartial StatusFlag = C.FPL_STATUS_HOLDERS_PARTIAL
)

// Holder is one process descriptor holding bytes of an image.
type Holder struct {
	PID      int
	FD       int  // the descriptor in that process, -1 if unknown
	Perm     Perm // permission bytes (100+i) it locks
	Unshared Perm // unshare bytes (200+i) it locks
	Name     string
}

// Status is which bytes of an image are held, by anybody.
type Status struct {
	Perm     Perm // permissions whose byte 100+i somebody holds
	Unshared Perm // permissions whose byte 200+i somebody holds
	Flags    StatusFlag
	// Holders found, by pid then descriptor (none unless asked for). Bytes
	// held with no holder found mean a holder this host cannot see, never
	// a free image.
	Holders []Holder
}

// InUse tells whether anybody holds a byte of the protocol (or libvirt's).
func (s Status) InUse() bool {
	return s.Perm != 0 || s.Unshared != 0 || s.Flags&(Legacy|Libvirt) != 0
}

// Query reports which bytes are held on path, by anybody (this process
// included); with holders, also the processes holding them (a walk of
// /proc: ask only when names are needed).
func Query(path string, holders bool) (Status, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var flags C.uint32_t
	n := 0
	if holders {
		flags = C.FPL_QUERY_HOLDERS
		n = 8
	}
	for {
		var st C.fpl_status
		var err C.fpl_error
		buf := make([]C.fpl_holder, n)
		var first *C.fpl_holder
		if n > 0 {
			first = &buf[0]
		}
		if rc := C.fpl_query(cpath, flags, &st, first, C.size_t(n), &err); rc != 0 {
			return Status{}, newError("query", path, rc, &err)
		}
		// Holders come and go between calls: ask again until all fit.
		if int(st.n_holders) > n {
			n = int(st.n_holders) + 8
			continue
		}
		s := Status{Perm: Perm(st.perm), Unshared: Perm(st.unshared), Flags: StatusFlag(st.flags)}
		for _, h := range buf[:st.n_holders] {
			s.Holders = append(s.Holders, Holder{
				PID: int(h.pid), FD: int(h.fd), Perm: Perm(h.perm), Unshared: Perm(h.unshared),
				Name: C.GoString(&h.name[0]),
			})
		}
		return s, nil
	}
}

// Version is the loaded libfpl's version, e.g. "0.1.0".
func Version() string { return C.GoString(C.fpl_version()) }

// HeaderVersion is the version of the fpl.h these bindings were built with.
const HeaderVersion = C.FPL_VERSION_STRING
