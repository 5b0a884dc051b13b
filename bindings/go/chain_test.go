package fpl_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"fpl"
)

const cr = fpl.PermConsistentRead

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(tool(t, "qemu-img"), args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newChain makes top.qcow2 over base.raw (a relative backing name) with
// qemu-img, and returns both paths.
func newChain(t *testing.T) (top, base string) {
	t.Helper()
	dir := t.TempDir()
	top, base = filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "base.raw")
	qemuImg(t, "create", "-q", "-f", "raw", base, "16M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top)
	return top, base
}

func chained(m fpl.Mode) fpl.Mode {
	m.Chain = true
	return m
}

func qemuIOWrite(t *testing.T, path, format string) (string, error) {
	out, err := exec.Command(tool(t, "qemu-io"), "-f", format, "-c", "write 0 512", path).CombinedOutput()
	return string(out), err
}

// dropLocksBehindLibfplsBack unlocks every byte of the open file
// descriptions this process has on path, as a file system that loses its
// locks does (a GlusterFS brick restart, an expired NFS lease): libfpl's
// handle is left believing it holds them.
func dropLocksBehindLibfplsBack(t *testing.T, path string) {
	t.Helper()
	want, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	const fOFDSetlk = 37 // F_OFD_SETLK, which package syscall does not name
	found := 0
	for _, e := range entries {
		st, err := os.Stat("/proc/self/fd/" + e.Name())
		if err != nil || !os.SameFile(st, want) {
			continue
		}
		var fd uintptr
		fmt.Sscan(e.Name(), &fd)
		unlock := syscall.Flock_t{Type: syscall.F_UNLCK, Whence: 0, Start: 0, Len: 0}
		if err := syscall.FcntlFlock(fd, fOFDSetlk, &unlock); err != nil {
			t.Fatalf("F_OFD_SETLK F_UNLCK on fd %d: %v", fd, err)
		}
		found++
	}
	if found == 0 {
		t.Fatalf("no descriptor of this process is open on %s", path)
	}
}

func TestChainListsBothMembersWithQEMUsDerivedRequests(t *testing.T) {
	top, base := newChain(t)
	// The write preset, like a VM's virtio disk (CHAINS.md section 1): the
	// qcow2 top reads, writes and resizes and shares only reading; the raw
	// backing file is only read and protected from writers (100, 201, 203).
	members, err := fpl.Chain(top, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	want := []fpl.Member{
		{Path: top, Role: fpl.RoleImage, Format: fpl.FormatQcow2, Depth: 0, Perm: rwr, Shared: cr},
		{Path: base, Role: fpl.RoleBacking, Format: fpl.FormatRaw, Depth: 1, Perm: cr, Shared: cr | fpl.PermWriteUnchanged},
	}
	if !reflect.DeepEqual(members, want) {
		t.Fatalf("members %+v, want %+v", members, want)
	}
	if members[1].Role.String() != "backing" || members[0].Format.String() != "qcow2" {
		t.Fatalf("names %v %v", members[1].Role, members[0].Format)
	}
	// Sharing everything is QEMU's force-share (-U): byte 100 only, everywhere.
	members, err = fpl.Chain(top, fpl.ReadShared)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.Perm != cr || m.Shared != fpl.PermAll {
			t.Fatalf("read-shared member %+v", m)
		}
	}
	// It takes nothing.
	for _, r := range fpl.QueryMany([]string{top, base}, false) {
		if r.Err != nil || r.Status.InUse() {
			t.Fatalf("chain took locks: %+v", r)
		}
	}
	// Relative names join the overlay's directory as given.
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chdir(filepath.Dir(filepath.Dir(top))); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	rel := filepath.Join(filepath.Base(filepath.Dir(top)), "top.qcow2")
	members, err = fpl.Chain(rel, fpl.Read)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 2 || members[0].Path != rel || members[1].Path != filepath.Join(filepath.Dir(rel), "base.raw") {
		t.Fatalf("relative: %+v", members)
	}
}

func TestChainListsADataFileAndARemoteBackingFile(t *testing.T) {
	dir := t.TempDir()
	data, image := filepath.Join(dir, "d.raw"), filepath.Join(dir, "x.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+data+",data_file_raw=on", image, "16M")
	members, err := fpl.Chain(image, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	// A data file follows the request's write and never shares resize.
	want := []fpl.Member{
		{Path: image, Role: fpl.RoleImage, Format: fpl.FormatQcow2, Depth: 0, Perm: rwr, Shared: cr},
		{Path: data, Role: fpl.RoleDataFile, Format: fpl.FormatRaw, Depth: 0, Perm: rwr, Shared: cr},
	}
	if !reflect.DeepEqual(members, want) {
		t.Fatalf("members %+v, want %+v", members, want)
	}
	// An NBD backing file is listed as written, never opened or locked.
	remote, url := filepath.Join(dir, "r.qcow2"), "nbd://localhost:10809/exp"
	qemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", url, "-F", "raw", remote, "16M")
	members, err = fpl.Chain(remote, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 2 || members[1] != (fpl.Member{Path: url, Role: fpl.RoleBacking, Format: fpl.FormatRemote, Depth: 1, Perm: cr, Shared: cr | fpl.PermWriteUnchanged}) {
		t.Fatalf("members %+v", members)
	}
	if members[1].Format.String() != "remote" || members[1].Role.String() != "backing" {
		t.Fatalf("names %v %v", members[1].Format, members[1].Role)
	}
	lock, err := fpl.Acquire(remote, chained(fpl.Write))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	if err := lock.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestChainLongerThanTheFirstBufferIsListedWhole(t *testing.T) {
	dir := t.TempDir()
	qemuImg(t, "create", "-q", "-f", "raw", filepath.Join(dir, "l0.raw"), "1M")
	below := "l0.raw"
	for i := 1; i <= 11; i++ {
		name := fmt.Sprintf("l%d.qcow2", i)
		format := "qcow2"
		if i == 1 {
			format = "raw"
		}
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", below, "-F", format, filepath.Join(dir, name))
		below = name
	}
	members, err := fpl.Chain(filepath.Join(dir, below), fpl.Read)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 12 {
		t.Fatalf("%d members, want 12: %+v", len(members), members)
	}
	for i, m := range members {
		name := fmt.Sprintf("l%d.qcow2", 11-i)
		if i == 11 {
			name = "l0.raw"
		}
		if filepath.Base(m.Path) != name || m.Depth != i {
			t.Fatalf("member %d is %+v, want %s at depth %d", i, m, name, i)
		}
	}
}

func TestChainWithAMissingBackingFileIsRefusedInQEMUsWords(t *testing.T) {
	top, base := newChain(t)
	os.Remove(base)
	_, err := fpl.Chain(top, fpl.Read)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing backing file: %v", err)
	}
	want := fmt.Sprintf("Could not open backing file: Could not open '%s': No such file or directory", base)
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if _, err := fpl.Acquire(top, chained(fpl.Read)); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("chain acquire with a missing backing file: %v", err)
	}
}

func TestChainLockConflictsOnAMemberAndNamesIt(t *testing.T) {
	top, base := newChain(t)
	writer := holdWithQEMUAs(t, base, "raw", false) // qemu-io writes base.raw: 100, 101, 103
	// The top alone is free...
	lock, err := fpl.Acquire(top, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	lock.Release()
	// ...the image is not: its backing file must be protected from writers.
	lock, err = fpl.Acquire(top, chained(fpl.Write))
	if lock != nil {
		t.Fatal("got a chain lock while qemu-io writes the backing file")
	}
	e := conflict(t, err)
	want := fmt.Sprintf("Failed to get shared \"write\" lock (held by qemu-io, pid %d)\nIs another process using the image [%s]?", writer.Process.Pid, base)
	if e.Byte != 101 || e.Perm != fpl.PermWrite || e.Holder != writer.Process.Pid || e.Message != want {
		t.Fatalf("conflict %+v, want byte 101, write, %q", e, want)
	}
	// All or nothing: the top, locked first, was rolled back.
	if st, _ := fpl.Query(top, false); st.InUse() {
		t.Fatalf("top still held: %+v", st)
	}
	// Check says the same and takes nothing.
	if e := conflict(t, fpl.Check(top, chained(fpl.Write))); e.Message != want {
		t.Fatalf("check: %q", e.Message)
	}
	if err := fpl.Check(top, fpl.Write); err != nil {
		t.Fatal(err)
	}
	if err := fpl.Check(top, chained(fpl.ReadShared)); err != nil {
		t.Fatal(err)
	}
}

func TestChainLockHoldsEveryMemberAndReleaseFreesThemAll(t *testing.T) {
	top, base := newChain(t)
	lock, err := fpl.Acquire(top, chained(fpl.Write))
	if err != nil {
		t.Fatal(err)
	}
	if !lock.Mode().Chain {
		t.Fatal("the lock forgot it covers the chain")
	}
	r := fpl.QueryMany([]string{top, base}, true)
	if r[0].Err != nil || r[1].Err != nil {
		t.Fatal(r[0].Err, r[1].Err)
	}
	if st := r[0].Status; st.Perm != rwr || st.Unshared != fpl.PermWrite|fpl.PermWriteUnchanged|fpl.PermResize {
		t.Fatalf("top %+v", st)
	}
	// Strict rules: not sharing write also refuses write-unchanged (202).
	if st := r[1].Status; st.Perm != cr || st.Unshared != fpl.PermWrite|fpl.PermWriteUnchanged|fpl.PermResize {
		t.Fatalf("base %+v", st)
	}
	for _, q := range r {
		if len(q.Status.Holders) != 1 || q.Status.Holders[0].PID != os.Getpid() || q.Status.Holders[0].Access != fpl.AccessRead {
			t.Fatalf("holders %+v, want this process, reading", q.Status.Holders)
		}
	}
	// QEMU may not write the backing file meanwhile.
	if out, err := qemuIOWrite(t, base, "raw"); err == nil || !strings.Contains(out, "Failed to get \"write\" lock") {
		t.Fatalf("qemu-io wrote the backing file of a chain lock: %v: %s", err, out)
	}
	if err := lock.Verify(); err != nil {
		t.Fatal(err)
	}
	if err := lock.Release(); err != nil {
		t.Fatal(err)
	}
	for _, q := range fpl.QueryMany([]string{top, base}, false) {
		if q.Err != nil || q.Status.InUse() {
			t.Fatalf("after release: %+v", q)
		}
	}
	if out, err := qemuIOWrite(t, base, "raw"); err != nil {
		t.Fatalf("qemu-io after release: %v: %s", err, out)
	}
	// A VM's virtio disk, exactly (it shares reading and write-unchanged):
	// QEMU's own bytes (CHAINS.md), top RWX (100, 101, 103, 201, 203) and
	// base RP (100, 201, 203).
	vmDisk := fpl.Mode{Perm: rwr, Shared: cr | fpl.PermWriteUnchanged, Exact: true, Chain: true}
	if lock, err = fpl.Acquire(top, vmDisk); err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	r = fpl.QueryMany([]string{top, base}, false)
	if r[0].Status.Perm != rwr || r[0].Status.Unshared != fpl.PermWrite|fpl.PermResize ||
		r[1].Status.Perm != cr || r[1].Status.Unshared != fpl.PermWrite|fpl.PermResize {
		t.Fatalf("exact: %+v", r)
	}
}

func TestChainUpdateIsAllOrNothing(t *testing.T) {
	top, base := newChain(t)
	writer := holdWithQEMUAs(t, base, "raw", false)
	lock, err := fpl.Acquire(top, chained(fpl.ReadShared))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	e := conflict(t, lock.Update(fpl.Write)) // Chain comes from the lock
	if e.Holder != writer.Process.Pid || !strings.HasSuffix(e.Message, "["+base+"]?") {
		t.Fatalf("update refused by %+v", e)
	}
	if lock.Mode() != chained(fpl.ReadShared) {
		t.Fatalf("mode changed to %+v", lock.Mode())
	}
	if st, _ := fpl.Query(top, false); st.Perm != cr || st.Unshared != 0 {
		t.Fatalf("top %+v after a refused update", st)
	}
	writer.Process.Kill()
	writer.Wait()
	if err := lock.Update(fpl.Write); err != nil {
		t.Fatal(err)
	}
	if lock.Mode() != chained(fpl.Write) {
		t.Fatalf("mode %+v", lock.Mode())
	}
	if st, _ := fpl.Query(base, false); st.Unshared != fpl.PermWrite|fpl.PermWriteUnchanged|fpl.PermResize {
		t.Fatalf("base %+v after update", st)
	}
}

func TestQueryManyNamesTheQEMUHolderWithItsAccess(t *testing.T) {
	top, base := newChain(t)
	qemu := holdWithQEMU(t, top, false) // qemu-io rw: top RWX, its raw base R
	missing := filepath.Join(t.TempDir(), "missing.img")
	r := fpl.QueryMany([]string{top, base, missing, missing}, true)
	if len(r) != 4 || r[0].Err != nil || r[1].Err != nil {
		t.Fatalf("%+v", r)
	}
	pid := qemu.Process.Pid
	if st := r[0].Status; st.Perm != rwr || st.Unshared != fpl.PermWrite|fpl.PermResize ||
		len(st.Holders) != 1 || st.Holders[0].PID != pid || st.Holders[0].Name != "qemu-io" ||
		st.Holders[0].Access != fpl.AccessRead|fpl.AccessWrite || st.Holders[0].Flags != 0 {
		t.Fatalf("top %+v, want qemu-io %d reading and writing", st, pid)
	}
	// qemu-io reads the backing file, sharing everything: byte 100 only.
	if st := r[1].Status; st.Perm != cr || st.Unshared != 0 ||
		len(st.Holders) != 1 || st.Holders[0].PID != pid || st.Holders[0].Access != fpl.AccessRead {
		t.Fatalf("base %+v, want qemu-io %d reading", st, pid)
	}
	// One missing image does not hide the others.
	for _, q := range r[2:] {
		var e *fpl.Error
		if !errors.Is(q.Err, fs.ErrNotExist) || !errors.As(q.Err, &e) || e.Path != missing || !strings.Contains(e.Error(), "missing.img") {
			t.Fatalf("missing image: %v", q.Err)
		}
	}
	// The first failure has libfpl's own message, the others their errno.
	_, alone := fpl.Query(missing, false)
	if r[2].Err.Error() != alone.Error() || r[3].Err.Error() != "cannot inspect '"+missing+"': no such file or directory" {
		t.Fatalf("messages %q and %q, want %q and the errno", r[2].Err, r[3].Err, alone)
	}
	// Holders only when asked for.
	for _, q := range fpl.QueryMany([]string{top, base}, false) {
		if q.Err != nil || len(q.Status.Holders) != 0 || !q.Status.InUse() {
			t.Fatalf("without holders: %+v", q)
		}
	}
	if r := fpl.QueryMany(nil, true); len(r) != 0 {
		t.Fatalf("no paths: %+v", r)
	}
}

func TestQueryManyGrowsItsHolderBuffer(t *testing.T) {
	image := newImage(t)
	var locks []*fpl.Lock
	for i := 0; i < 20; i++ {
		l, err := fpl.Acquire(image, fpl.ReadShared)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release()
		locks = append(locks, l)
	}
	r := fpl.QueryMany([]string{image}, true)
	if r[0].Err != nil || len(r[0].Status.Holders) != len(locks) {
		t.Fatalf("%d holders, want %d: %v", len(r[0].Status.Holders), len(locks), r[0].Err)
	}
}

func TestVerifyHoldsThenReportsALostLock(t *testing.T) {
	image := newImage(t)
	lock, err := fpl.Acquire(image, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.Verify(); err != nil {
		t.Fatal(err)
	}
	dropLocksBehindLibfplsBack(t, image)
	err = lock.Verify()
	var e *fpl.Error
	if !errors.Is(err, syscall.ENOLCK) || !errors.As(err, &e) || e.Op != "verify" {
		t.Fatalf("verify of a lost lock: %v", err)
	}
	re := regexp.MustCompile(`^lost the lock on \[` + regexp.QuoteMeta(image) + `\]: byte 1\d\d is no longer held$`)
	if !re.MatchString(e.Message) {
		t.Fatalf("message %q", e.Message)
	}
	if err := lock.Release(); err != nil {
		t.Fatal(err)
	}
	if err := lock.Verify(); !errors.Is(err, fpl.ErrReleased) {
		t.Fatalf("verify after release: %v", err)
	}
}

func TestVerifyOfAChainLockNamesTheMemberThatLostIt(t *testing.T) {
	top, base := newChain(t)
	lock, err := fpl.Acquire(top, chained(fpl.Write))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	if err := lock.Verify(); err != nil {
		t.Fatal(err)
	}
	dropLocksBehindLibfplsBack(t, base)
	if err := lock.Verify(); !errors.Is(err, syscall.ENOLCK) || !strings.Contains(err.Error(), "lost the lock on ["+base+"]") {
		t.Fatalf("verify: %v", err)
	}
}

func TestAcquireFileRefusesChain(t *testing.T) {
	top, _ := newChain(t)
	f, err := os.Open(top)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fpl.AcquireFile(f, chained(fpl.Read)); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("AcquireFile with Chain: %v", err)
	}
}
