// Package fpl takes, changes, tests and inspects the locks QEMU puts on disk
// images (its file-posix byte-range locking protocol), exactly as QEMU does,
// and names the processes holding an image. It wraps libfpl, loaded on
// first use: building needs cgo and the C library only, running needs
// libfpl.so.1 (see Load; without it, every call returns an error wrapping
// ErrNotInstalled).
//
//	lock, err := fpl.Acquire("vm.qcow2", fpl.Write)
//	if errors.Is(err, syscall.EAGAIN) {
//		// in use: err is an *fpl.Error with QEMU's message and the holder
//	}
//	defer lock.Release()
//
// Whole images: Chain lists the files QEMU opens for an image (a qcow2
// overlay, its data file, its backing chain), and a Mode with Chain set
// locks all of them, all or nothing:
//
//	mode := fpl.Write
//	mode.Chain = true
//	lock, err := fpl.Acquire("top.qcow2", mode) // a conflict names the member
//
// Processes that use an image without locks (QEMU with locking=off, an
// incoming migration's destination) are invisible to QEMU's protocol:
// QueryWith lists them (Inspect{Openers: true}, Holder.NoLocks), and a
// Mode with NoUnlockedOpeners set refuses beside them with an *Error
// wrapping syscall.EBUSY.
//
// The bindings speak libfpl's ABI 1 (libfpl.so.1), declared by the copy
// of libfpl's fpl.h they carry.
package fpl

/*
#include <stdlib.h>
#include "fpl.h"
*/
import "C"

import (
	"errors"
	"math"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// ABI 1's sizes of the structures the caller allocates (libfpl writes into
// them): building with another fpl.h fails here rather than corrupting
// memory at run time.
const (
	errorSize  = 304
	statusSize = 32
	holderSize = 112
	memberSize = 4148
)

var (
	_ [unsafe.Sizeof(C.fpl_error{}) - errorSize]struct{}
	_ [errorSize - unsafe.Sizeof(C.fpl_error{})]struct{}
	_ [unsafe.Sizeof(C.fpl_status{}) - statusSize]struct{}
	_ [statusSize - unsafe.Sizeof(C.fpl_status{})]struct{}
	_ [unsafe.Sizeof(C.fpl_holder{}) - holderSize]struct{}
	_ [holderSize - unsafe.Sizeof(C.fpl_holder{})]struct{}
	_ [unsafe.Sizeof(C.fpl_member{}) - memberSize]struct{}
	_ [memberSize - unsafe.Sizeof(C.fpl_member{})]struct{}
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
	// Chain acts on every file of the image as QEMU opens it (the image,
	// its qcow2 data file, its backing chain: see Chain), each with the
	// request QEMU derives for it, all or nothing: a conflict on any member
	// leaves none held and names that member. Not for AcquireFile (the
	// chain needs the image's path). A lock keeps what it was acquired
	// with: Update ignores it.
	Chain bool
	// NoUnlockedOpeners also refuses, with an *Error wrapping
	// syscall.EBUSY, while another process has the image (with Chain: any
	// member) open and holds none of its bytes: QEMU with locking=off, an
	// incoming migration's destination, which QEMU's protocol cannot see.
	// The locks are taken first, then /proc is walked once, and everything
	// is released if one is found. Its message names the file, the process
	// and the descriptor. For Update it applies to that change.
	NoUnlockedOpeners bool
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
	if m.Chain {
		f |= C.FPL_FLAG_CHAIN
	}
	if m.NoUnlockedOpeners {
		f |= C.FPL_FLAG_NO_UNLOCKED_OPENERS
	}
	return f
}

// Error is a failed libfpl call. It wraps the errno: errors.Is(err,
// syscall.EAGAIN) is a conflict with another holder, errors.Is(err,
// syscall.EBUSY) a process with the image open without locks (asked for
// with Mode.NoUnlockedOpeners), errors.Is(err, fs.ErrNotExist) a missing
// image.
type Error struct {
	Op    string // "acquire", "update", "release", "check", "verify", "query" or "chain"
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
	lib  *library
	c    *C.fpl_lock
	path string
	mode Mode
}

func newLock(lib *library, c *C.fpl_lock, path string, mode Mode) *Lock {
	l := &Lock{lib: lib, c: c, path: path, mode: mode}
	// Like an *os.File, a lock that is no longer reachable is released.
	runtime.SetFinalizer(l, (*Lock).Release)
	return l
}

// Acquire opens path read-only and takes QEMU's locks for mode: lock, test,
// roll back on conflict. A conflict is an *Error wrapping syscall.EAGAIN,
// with nothing left held.
func Acquire(path string, mode Mode) (*Lock, error) {
	lib, err := libfpl()
	if err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var c *C.fpl_lock
	var e C.fpl_error
	if rc := lib.acquire(cpath, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &c, &e); rc != 0 {
		return nil, newError("acquire", path, rc, &e)
	}
	return newLock(lib, c, path, mode), nil
}

// AcquireWait is Acquire, trying again every 100 ms while the image is in
// use (a conflict; with NoUnlockedOpeners, an opener without locks) for up
// to timeout, as `fpl hold --wait` does (libfpl 1.1, fpl_acquire_wait). A
// timeout of 0 tries once; one beyond about 49 days is that long. After
// the timeout it returns the last conflict, its holder named. It blocks
// the calling goroutine (and its thread) meanwhile. With a libfpl 1.0
// library it returns an *Error wrapping syscall.ENOSYS.
func AcquireWait(path string, mode Mode, timeout time.Duration) (*Lock, error) {
	lib, err := libfpl()
	if err != nil {
		return nil, err
	}
	if lib.sym.acquireWait == nil {
		return nil, &Error{Op: "acquire", Path: path, Errno: syscall.ENOSYS,
			Message: lib.name + " is libfpl " + lib.version() + ": AcquireWait needs libfpl 1.1 (fpl_acquire_wait)"}
	}
	if timeout < 0 {
		timeout = 0
	}
	ms := (timeout + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		ms = math.MaxUint32
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var c *C.fpl_lock
	var e C.fpl_error
	if rc := lib.acquireWait(cpath, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), C.uint32_t(ms), &c, &e); rc != 0 {
		return nil, newError("acquire", path, rc, &e)
	}
	return newLock(lib, c, path, mode), nil
}

// AcquireFile takes the locks on the open file description of f (opened for
// reading). The lock keeps its own duplicate of the descriptor, so closing
// f does not release it.
func AcquireFile(f *os.File, mode Mode) (*Lock, error) {
	lib, err := libfpl()
	if err != nil {
		return nil, err
	}
	var c *C.fpl_lock
	var e C.fpl_error
	rc := lib.acquireFD(C.int(f.Fd()), C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &c, &e)
	runtime.KeepAlive(f)
	if rc != 0 {
		return nil, newError("acquire", f.Name(), rc, &e)
	}
	return newLock(lib, c, f.Name(), mode), nil
}

// Update changes the lock to mode (QEMU's prepare / commit / abort). On
// failure the lock is left exactly as it was; loosening never conflicts. A
// chain lock changes every member, all or nothing, and stays a chain lock
// (mode.Chain is ignored: the lock's own applies).
func (l *Lock) Update(mode Mode) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c == nil {
		return ErrReleased
	}
	mode.Chain = l.mode.Chain
	var err C.fpl_error
	if rc := l.lib.update(l.c, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &err); rc != 0 {
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

// Verify tells whether all the bytes the lock took (for a chain lock: on
// every member) are still held on the file, as other processes see it from
// an open file description of their own. nil if they are; an *Error
// wrapping syscall.ENOLCK when they were lost (a file system that dropped
// them: a GlusterFS brick restart, an expired NFS lease), its message
// naming the file and the byte; syscall.ENOTSUP for a lock that fell back
// to POSIX locks (AllowPOSIX: its own process cannot test them). Changes
// nothing.
func (l *Lock) Verify() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c == nil {
		return ErrReleased
	}
	var err C.fpl_error
	if rc := l.lib.verify(l.c, &err); rc != 0 {
		return newError("verify", l.path, rc, &err)
	}
	return nil
}

// Release unlocks every byte the lock took and closes its descriptor. A
// second Release returns ErrReleased.
func (l *Lock) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c == nil {
		return ErrReleased
	}
	rc := l.lib.release(l.c)
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
	lib, err := libfpl()
	if err != nil {
		return err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var e C.fpl_error
	if rc := lib.check(cpath, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(), &e); rc != 0 {
		return newError("check", path, rc, &e)
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

// Access is how a holder's descriptor was opened.
type Access uint32

// The bits of Access.
const (
	AccessRead  Access = C.FPL_ACCESS_READ
	AccessWrite Access = C.FPL_ACCESS_WRITE
)

// HolderFlag qualifies a Holder.
type HolderFlag uint32

// The flags of Holder.
const (
	// HolderNoLocks: an opener, with the image open and none of its bytes.
	HolderNoLocks HolderFlag = C.FPL_HOLDER_NO_LOCKS
	// HolderInferred: the file system keeps its locks out of /proc (FUSE:
	// GlusterFS, ...); named because it has the image open while its bytes
	// are held, not from its lock lines.
	HolderInferred HolderFlag = C.FPL_HOLDER_INFERRED
	// HolderOtherNode: with HolderNoLocks, another device node of the
	// image's block device (a container's /dev): whatever it locks is its
	// node's, never the image's. Its path is /proc/PID/fd/FD's link.
	HolderOtherNode HolderFlag = C.FPL_HOLDER_OTHER_NODE
	// HolderNodeLocks: with HolderOtherNode, it holds protocol bytes on
	// its own node (a QEMU with locking on).
	HolderNodeLocks HolderFlag = C.FPL_HOLDER_NODE_LOCKS
)

// Holder is one process descriptor holding bytes of an image, or (listed
// with Inspect.Openers, NoLocks) having it open without any.
type Holder struct {
	PID      int
	FD       int  // the descriptor in that process, -1 if unknown
	Perm     Perm // permission bytes (100+i) it locks
	Unshared Perm // unshare bytes (200+i) it locks
	Name     string
	Access   Access // AccessRead, AccessWrite or both
	Flags    HolderFlag
}

// NoLocks tells whether h is an opener: the process has the image open on
// this descriptor and holds none of its bytes (QEMU with locking=off, an
// incoming migration's destination); Perm and Unshared are 0.
func (h Holder) NoLocks() bool { return h.Flags&HolderNoLocks != 0 }

// Inferred tells whether h was named by inference, not seen holding: the
// file system keeps its locks out of /proc (FUSE: GlusterFS), bytes are
// held that no lock line accounts for, and the process has the image open.
// Perm and Unshared are then every such byte.
func (h Holder) Inferred() bool { return h.Flags&HolderInferred != 0 }

func holderOf(h *C.fpl_holder) Holder {
	return Holder{
		PID: int(h.pid), FD: int(h.fd), Perm: Perm(h.perm), Unshared: Perm(h.unshared),
		Name: C.GoString(&h.name[0]), Access: Access(h.access), Flags: HolderFlag(h.flags),
	}
}

func statusOf(st *C.fpl_status, holders []C.fpl_holder) Status {
	s := Status{Perm: Perm(st.perm), Unshared: Perm(st.unshared), Flags: StatusFlag(st.flags)}
	for i := range holders {
		s.Holders = append(s.Holders, holderOf(&holders[i]))
	}
	return s
}

// Status is which bytes of an image are held, by anybody.
type Status struct {
	Perm     Perm // permissions whose byte 100+i somebody holds
	Unshared Perm // permissions whose byte 200+i somebody holds
	Flags    StatusFlag
	// Holders found, by pid then descriptor (none unless asked for), and
	// with Inspect.Openers the openers too (Holder.NoLocks). Bytes held with
	// no holder found mean a holder this host cannot see, never a free
	// image.
	Holders []Holder
}

// Openers are the holders that are openers (Holder.NoLocks), listed only
// with Inspect.Openers. An image with openers is in use although InUse is
// false.
func (s Status) Openers() []Holder {
	var out []Holder
	for _, h := range s.Holders {
		if h.NoLocks() {
			out = append(out, h)
		}
	}
	return out
}

// InUse tells whether anybody holds a byte of the protocol (or libvirt's).
// Openers hold none: see Openers.
func (s Status) InUse() bool {
	return s.Perm != 0 || s.Unshared != 0 || s.Flags&(Legacy|Libvirt) != 0
}

// Inspect is what a query looks for in /proc besides the held bytes.
type Inspect struct {
	// Holders names the processes holding the bytes (FPL_QUERY_HOLDERS).
	Holders bool
	// Openers also lists, from the same walk, the processes that have the
	// image open and hold none of its bytes (FPL_QUERY_OPENERS), flagged
	// HolderNoLocks; the walk then runs for a free image too. This process
	// is never listed.
	Openers bool
}

func (what Inspect) flags() C.uint32_t {
	var f C.uint32_t
	if what.Holders {
		f |= C.FPL_QUERY_HOLDERS
	}
	if what.Openers {
		f |= C.FPL_QUERY_OPENERS
	}
	return f
}

func (what Inspect) any() bool { return what.Holders || what.Openers }

// Query reports which bytes are held on path, by anybody (this process
// included); with holders, also the processes holding them (a walk of
// /proc: ask only when names are needed).
func Query(path string, holders bool) (Status, error) {
	return QueryWith(path, Inspect{Holders: holders})
}

// QueryWith is Query with openers, or other things to look for.
func QueryWith(path string, what Inspect) (Status, error) {
	lib, err := libfpl()
	if err != nil {
		return Status{}, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	flags := what.flags()
	n := 0
	if what.any() {
		n = 8
	}
	for {
		var st C.fpl_status
		var e C.fpl_error
		buf := make([]C.fpl_holder, n)
		var first *C.fpl_holder
		if n > 0 {
			first = &buf[0]
		}
		if rc := lib.query(cpath, flags, &st, first, C.size_t(n), &e); rc != 0 {
			return Status{}, newError("query", path, rc, &e)
		}
		// Holders come and go between calls: ask again until all fit.
		if int(st.n_holders) > n {
			n = int(st.n_holders) + 8
			continue
		}
		return statusOf(&st, buf[:st.n_holders]), nil
	}
}

// QueryResult is one image's answer from QueryMany.
type QueryResult struct {
	Status Status
	// nil, or the error Query would have returned for this image.
	Err error
}

// QueryMany is Query for many images at once: each image's bytes are
// tested, then the holders of all of them are found with one walk of
// /proc, so asking about N images (the members of a chain, every disk of
// a host) costs about one Query. One result per path, in order; one image
// that cannot be inspected does not hide the others.
func QueryMany(paths []string, holders bool) []QueryResult {
	return QueryManyWith(paths, Inspect{Holders: holders})
}

// QueryManyWith is QueryMany with openers, or other things to look for,
// found in the same walk of /proc.
func QueryManyWith(paths []string, what Inspect) []QueryResult {
	n := len(paths)
	out := make([]QueryResult, n)
	if n == 0 {
		return out
	}
	lib, loadErr := libfpl()
	if loadErr != nil {
		for i := range out {
			out[i].Err = loadErr
		}
		return out
	}
	cpaths := make([]*C.char, n)
	for i, p := range paths {
		cpaths[i] = C.CString(p)
		defer C.free(unsafe.Pointer(cpaths[i]))
	}
	flags := what.flags()
	capacity := 0
	if what.any() {
		capacity = 8 * n
	}
	statuses := make([]C.fpl_status, n)
	results := make([]C.int32_t, n)
	var buf []C.fpl_holder
	var err C.fpl_error
	for {
		buf = make([]C.fpl_holder, capacity)
		var first *C.fpl_holder
		if capacity > 0 {
			first = &buf[0]
		}
		var total C.size_t
		rc := lib.queryMany(&cpaths[0], C.size_t(n), flags, &statuses[0], &results[0],
			first, C.size_t(capacity), &total, &err)
		if rc != 0 && !contains(results, C.int32_t(rc)) {
			// A bad argument: nothing was inspected.
			for i := range out {
				out[i].Err = newError("query", paths[i], rc, &err)
			}
			return out
		}
		// Holders come and go between calls: ask again until all fit.
		if int(total) <= capacity {
			break
		}
		capacity = int(total) + 8
	}
	described := false
	start := 0
	for i := range out {
		switch {
		case results[i] == 0:
			count := 0
			if what.any() {
				count = int(statuses[i].n_holders)
			}
			out[i].Status = statusOf(&statuses[i], buf[start:start+count])
			start += count
		case !described:
			// err describes the first image that could not be inspected.
			described = true
			out[i].Err = newError("query", paths[i], C.int(results[i]), &err)
		default:
			// Only its errno is known: worded like libfpl's messages.
			e := newError("query", paths[i], C.int(results[i]), nil).(*Error)
			e.Message = "cannot inspect '" + paths[i] + "': " + e.Errno.Error()
			out[i].Err = e
		}
	}
	return out
}

func contains(results []C.int32_t, rc C.int32_t) bool {
	for _, r := range results {
		if r == rc {
			return true
		}
	}
	return false
}

// Role is what a file is to an image.
type Role uint32

// The roles of Member.
const (
	RoleImage    Role = C.FPL_ROLE_IMAGE     // the image itself
	RoleBacking  Role = C.FPL_ROLE_BACKING   // a backing file, at some depth
	RoleDataFile Role = C.FPL_ROLE_DATA_FILE // a qcow2 external data file
)

func (r Role) String() string {
	switch r {
	case RoleImage:
		return "image"
	case RoleBacking:
		return "backing"
	case RoleDataFile:
		return "data-file"
	}
	return "role(" + strconv.FormatUint(uint64(r), 10) + ")"
}

// Format is a member's format.
type Format uint32

// The formats of Member.
const (
	FormatRaw   Format = C.FPL_FORMAT_RAW
	FormatQcow2 Format = C.FPL_FORMAT_QCOW2
	// FormatRemote: reached through a protocol (nbd:, ...): listed, never
	// opened, locked or followed, as QEMU's client locks nothing there.
	FormatRemote Format = C.FPL_FORMAT_REMOTE
)

func (f Format) String() string {
	switch f {
	case FormatRaw:
		return "raw"
	case FormatQcow2:
		return "qcow2"
	case FormatRemote:
		return "remote"
	}
	return "format(" + strconv.FormatUint(uint64(f), 10) + ")"
}

// Member is one file of an image.
type Member struct {
	// As QEMU opens it: a relative backing name joined to the overlay's
	// directory as given, symlinks not resolved; a relative data-file name
	// as written (QEMU opens it from the working directory).
	Path   string
	Role   Role
	Format Format
	// 0: the image and its data file; 1: its backing file and that file's
	// data file; ...
	Depth int
	// What a lock with Mode.Chain takes on this member for the mode asked
	// about (QEMU's derivation, strict or Exact).
	Perm   Perm
	Shared Perm
}

// Chain lists the files of the image at path in the order QEMU opens them
// (the image first, then its data file, its backing file, ...), each with
// what Acquire(path, mode) with mode.Chain would take on it. It reads only
// their headers and takes no lock. A member that cannot be opened is an
// *Error in QEMU's words (`Could not open backing file: Could not open
// ...`, wrapping ENOENT); a loop or a chain too deep wraps ELOOP, a
// malformed header EINVAL, a format libfpl does not follow ENOTSUP.
func Chain(path string, mode Mode) ([]Member, error) {
	lib, err := libfpl()
	if err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	capacity := 8
	for {
		buf := make([]C.fpl_member, capacity)
		var n C.size_t
		var e C.fpl_error
		if rc := lib.chain(cpath, C.uint32_t(mode.Perm), C.uint32_t(mode.Shared), mode.flags(),
			&buf[0], C.size_t(capacity), &n, &e); rc != 0 {
			return nil, newError("chain", path, rc, &e)
		}
		// The headers may change between calls: ask until all fit.
		if int(n) > capacity {
			capacity = int(n)
			continue
		}
		members := make([]Member, n)
		for i := range members {
			m := &buf[i]
			members[i] = Member{
				Path: C.GoString(&m.path[0]), Role: Role(m.role), Format: Format(m.format),
				Depth: int(m.depth), Perm: Perm(m.perm), Shared: Perm(m.shared),
			}
		}
		return members, nil
	}
}

// Version is the loaded libfpl's version, e.g. "1.0.0", or "" if libfpl
// cannot be loaded (Load says why).
func Version() string {
	lib, err := libfpl()
	if err != nil {
		return ""
	}
	return lib.version()
}

// HeaderVersion is the version of the fpl.h these bindings were built with.
const HeaderVersion = C.FPL_VERSION_STRING
