package fpl_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"fpl"
)

// newRaw makes a 16 MiB raw image with qemu-img.
func newRaw(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	out, err := exec.Command(tool(t, "qemu-img"), "create", "-q", "-f", "raw", path, "16M").CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return path
}

// openFD is the descriptor of process pid that has path open, read from
// /proc (not through libfpl), or -1.
func openFD(pid int, path string) int {
	want, err := os.Stat(path)
	if err != nil {
		return -1
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	for _, e := range entries {
		st, err := os.Stat(filepath.Join(dir, e.Name()))
		if err == nil && os.SameFile(st, want) {
			fd, _ := strconv.Atoi(e.Name())
			return fd
		}
	}
	return -1
}

// openWithoutLocks starts `qemu-io [-r] --image-opts
// driver=raw,...,file.locking=off IMAGE` reading commands from a pipe: it
// has the image open and takes none of its bytes, as QEMU with
// locking=off does. Returns once /proc shows its descriptor; killed when
// the test ends.
func openWithoutLocks(t *testing.T, image string, readOnly bool) (*exec.Cmd, int) {
	t.Helper()
	var args []string
	if readOnly {
		args = append(args, "-r")
	}
	opts := "driver=raw,file.driver=file,file.filename=" + image + ",file.locking=off"
	cmd := exec.Command(tool(t, "qemu-io"), append(args, "--image-opts", opts)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if fd := openFD(cmd.Process.Pid, image); fd >= 0 {
			return cmd, fd
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-io never opened %s", image)
		}
	}
}

func TestQueryWithOpenersListsAQEMUWithLockingOff(t *testing.T) {
	dir := t.TempDir()
	image := newRaw(t, dir, "disk.raw")
	ro := newRaw(t, dir, "ro.raw")
	writer, fd := openWithoutLocks(t, image, false)
	reader, _ := openWithoutLocks(t, ro, true)

	// QEMU's protocol sees a free image: the hazard.
	plain, err := fpl.Query(image, true)
	if err != nil {
		t.Fatal(err)
	}
	if plain.InUse() || len(plain.Holders) != 0 {
		t.Fatalf("without openers: %+v", plain)
	}
	st, err := fpl.QueryWith(image, fpl.Inspect{Holders: true, Openers: true})
	if err != nil {
		t.Fatal(err)
	}
	want := fpl.Holder{PID: writer.Process.Pid, FD: fd, Name: "qemu-io",
		Access: fpl.AccessRead | fpl.AccessWrite, Flags: fpl.HolderNoLocks}
	if st.InUse() || len(st.Holders) != 1 || st.Holders[0] != want || !st.Holders[0].NoLocks() {
		t.Fatalf("got %+v, want one opener %+v", st, want)
	}
	if o := st.Openers(); len(o) != 1 || o[0] != want {
		t.Fatalf("Openers() = %+v", o)
	}

	// QueryManyWith: one walk for all; a locking QEMU is a holder, not an opener.
	locked := newImage(t)
	holder := holdWithQEMU(t, locked, false)
	res := fpl.QueryManyWith([]string{image, ro, locked}, fpl.Inspect{Holders: true, Openers: true})
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	if o := res[0].Status.Openers(); len(o) != 1 || o[0].PID != writer.Process.Pid {
		t.Fatalf("disk.raw: %+v", res[0].Status)
	}
	if o := res[1].Status.Openers(); len(o) != 1 || o[0].PID != reader.Process.Pid || o[0].Access != fpl.AccessRead {
		t.Fatalf("ro.raw: %+v", res[1].Status)
	}
	hs := res[2].Status.Holders
	if len(hs) == 0 || len(res[2].Status.Openers()) != 0 {
		t.Fatalf("locked: %+v", res[2].Status)
	}
	for _, h := range hs {
		if h.PID != holder.Process.Pid || h.NoLocks() || h.Perm == 0 {
			t.Fatalf("locked: %+v", h)
		}
	}
	// Without Openers, nobody on disk.raw.
	if r := fpl.QueryMany([]string{image}, true); r[0].Err != nil || len(r[0].Status.Holders) != 0 {
		t.Fatalf("QueryMany without openers: %+v", r[0])
	}
}

func TestNoUnlockedOpenersRefusesWithEBUSY(t *testing.T) {
	dir := t.TempDir()
	image := newRaw(t, dir, "disk.raw")
	writer, fd := openWithoutLocks(t, image, false)

	// Without the flag, granted: the protocol alone cannot see it.
	if err := fpl.Check(image, fpl.Write); err != nil {
		t.Fatal(err)
	}
	lock, err := fpl.Acquire(image, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	lock.Release()

	mode := fpl.Write
	mode.NoUnlockedOpeners = true
	_, err = fpl.Acquire(image, mode)
	var e *fpl.Error
	if !errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EAGAIN) || !errors.As(err, &e) {
		t.Fatalf("acquire beside an opener: %v", err)
	}
	prefix := "'" + image + "' is open read-write by qemu-io (pid " +
		strconv.Itoa(writer.Process.Pid) + ", fd " + strconv.Itoa(fd) + ") without locks"
	if !strings.HasPrefix(e.Message, prefix) || e.Op != "acquire" || e.Path != image {
		t.Fatalf("got %+v, want a message starting %q", e, prefix)
	}
	if st, _ := fpl.Query(image, false); st.InUse() {
		t.Fatalf("left held after the refusal: %+v", st)
	}
	if err := fpl.Check(image, mode); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("check: %v", err)
	}
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fpl.AcquireFile(f, mode); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("AcquireFile: %v", err)
	}
	// An update asking for it is refused, and the lock stays as it was.
	shared, err := fpl.Acquire(image, fpl.ReadShared)
	if err != nil {
		t.Fatal(err)
	}
	read := fpl.Read
	read.NoUnlockedOpeners = true
	if err := shared.Update(read); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("update: %v", err)
	}
	if m := shared.Mode(); m.Perm != fpl.ReadShared.Perm || m.Shared != fpl.ReadShared.Shared {
		t.Fatalf("mode after a refused update: %+v", m)
	}
	shared.Release()

	// A chain: any member's opener refuses it.
	top := filepath.Join(dir, "top.qcow2")
	if out, err := exec.Command(tool(t, "qemu-img"), "create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	chainMode := fpl.Read
	chainMode.NoUnlockedOpeners = true
	if err := fpl.Check(top, chainMode); err != nil {
		t.Fatalf("top alone: %v", err)
	}
	chainMode.Chain = true
	if _, err := fpl.Acquire(top, chainMode); !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "'"+image+"' is open") {
		t.Fatalf("chain: %v", err)
	}

	// Once the opener is gone, the flag changes nothing.
	writer.Process.Kill()
	writer.Wait()
	lock, err = fpl.Acquire(image, mode)
	if err != nil {
		t.Fatal(err)
	}
	lock.Release()
}
