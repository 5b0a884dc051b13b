package fpl_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"fpl"
)

const rwr = fpl.PermConsistentRead | fpl.PermWrite | fpl.PermResize

func tool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: these tests need QEMU's qemu-utils (qemu-img, qemu-io)", name)
	}
	return path
}

// newImage makes a 16 MiB qcow2 image with qemu-img.
func newImage(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	out, err := exec.Command(tool(t, "qemu-img"), "create", "-q", "-f", "qcow2", path, "16M").CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return path
}

// holdWithQEMU starts `qemu-io -f qcow2 [-r] IMAGE` reading commands from a
// pipe, so that it holds the image until the test ends, and waits for its
// locks to show up.
func holdWithQEMU(t *testing.T, image string, readOnly bool) *exec.Cmd {
	t.Helper()
	return holdWithQEMUAs(t, image, "qcow2", readOnly)
}

// holdWithQEMUAs is holdWithQEMU for an image of the given format.
func holdWithQEMUAs(t *testing.T, image, format string, readOnly bool) *exec.Cmd {
	t.Helper()
	args := []string{"-f", format}
	if readOnly {
		args = append(args, "-r")
	}
	cmd := exec.Command(tool(t, "qemu-io"), append(args, image)...)
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
		st, err := fpl.Query(image, false)
		if err != nil {
			t.Fatal(err)
		}
		if st.InUse() {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-io never locked %s", image)
		}
	}
}

func conflict(t *testing.T, err error) *fpl.Error {
	t.Helper()
	if !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("want a conflict (EAGAIN), got %v", err)
	}
	var e *fpl.Error
	if !errors.As(err, &e) {
		t.Fatalf("%T is not an *fpl.Error", err)
	}
	return e
}

func TestVersion(t *testing.T) {
	if err := fpl.Load(); err != nil {
		t.Fatal(err)
	}
	if fpl.Version() != fpl.HeaderVersion {
		t.Fatalf("library %s, header %s", fpl.Version(), fpl.HeaderVersion)
	}
	if want := os.Getenv("FPL_EXPECTED_VERSION"); want != "" && fpl.Version() != want {
		t.Fatalf("library %s, Cargo.toml %s", fpl.Version(), want)
	}
}

func TestWriteLockIsSeenThenReleased(t *testing.T) {
	image := newImage(t)
	lock, err := fpl.Acquire(image, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	st, err := fpl.Query(image, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.Perm != rwr || st.Unshared != fpl.PermWrite|fpl.PermWriteUnchanged|fpl.PermResize {
		t.Fatalf("held %+v", st)
	}
	if len(st.Holders) != 1 || st.Holders[0].PID != os.Getpid() || st.Holders[0].FD < 0 {
		t.Fatalf("holders %+v, want this process (%d)", st.Holders, os.Getpid())
	}
	// libfpl opens images read-only, whatever it locks.
	if h := st.Holders[0]; h.Access != fpl.AccessRead || h.Flags != 0 {
		t.Fatalf("holder %+v, want read access and no flags", h)
	}
	if err := lock.Release(); err != nil {
		t.Fatal(err)
	}
	if st, _ := fpl.Query(image, true); st.InUse() || len(st.Holders) != 0 {
		t.Fatalf("still held after release: %+v", st)
	}
	if err := lock.Release(); !errors.Is(err, fpl.ErrReleased) {
		t.Fatalf("second release: %v", err)
	}
	if err := lock.Update(fpl.Read); !errors.Is(err, fpl.ErrReleased) {
		t.Fatalf("update after release: %v", err)
	}
}

func TestQEMUWriterRefusesASecondWriter(t *testing.T) {
	image := newImage(t)
	qemu := holdWithQEMU(t, image, false)
	lock, err := fpl.Acquire(image, fpl.Write)
	if lock != nil {
		t.Fatal("got a lock next to a QEMU writer")
	}
	e := conflict(t, err)
	if e.Byte != 201 || e.Perm != fpl.PermWrite || e.Holder != qemu.Process.Pid || e.Op != "acquire" || e.Path != image {
		t.Fatalf("conflict %+v, want byte 201, write, pid %d", e, qemu.Process.Pid)
	}
	want := fmt.Sprintf("Failed to get \"write\" lock (held by qemu-io, pid %d)\nIs another process using the image [%s]?", qemu.Process.Pid, image)
	if err.Error() != want || e.Message != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
	// Rolled back: only QEMU's bytes 100, 101, 103, 201, 203 remain.
	st, err := fpl.Query(image, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.Perm != rwr || st.Unshared != fpl.PermWrite|fpl.PermResize {
		t.Fatalf("held %+v", st)
	}
	if len(st.Holders) != 1 || st.Holders[0].PID != qemu.Process.Pid || st.Holders[0].Name != "qemu-io" {
		t.Fatalf("holders %+v, want qemu-io %d", st.Holders, qemu.Process.Pid)
	}
	if st.Holders[0].Access != fpl.AccessRead|fpl.AccessWrite {
		t.Fatalf("qemu-io's access %v, want read and write", st.Holders[0].Access)
	}
	// Check predicts the same, taking nothing; reading beside QEMU is fine.
	if e := conflict(t, fpl.Check(image, fpl.Read)); e.Byte != 101 || !strings.HasPrefix(e.Message, "Failed to get shared \"write\" lock") {
		t.Fatalf("check read: %+v", e)
	}
	if err := fpl.Check(image, fpl.ReadShared); err != nil {
		t.Fatal(err)
	}
}

func TestUpgradeRefusedThenGranted(t *testing.T) {
	image := newImage(t)
	reader := holdWithQEMU(t, image, true) // 100, 201, 203
	lock, err := fpl.Acquire(image, fpl.ReadShared)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	if e := conflict(t, lock.Update(fpl.Write)); e.Holder != reader.Process.Pid || e.Op != "update" {
		t.Fatalf("upgrade refused by %+v", e)
	}
	if lock.Mode() != fpl.ReadShared {
		t.Fatalf("mode changed to %+v", lock.Mode())
	}
	if st, _ := fpl.Query(image, false); st.Perm != fpl.PermConsistentRead || st.Unshared != fpl.PermWrite|fpl.PermResize {
		t.Fatalf("held %+v after a refused upgrade", st)
	}
	reader.Process.Kill()
	reader.Wait()
	if err := lock.Update(fpl.Write); err != nil {
		t.Fatal(err)
	}
	if st, _ := fpl.Query(image, false); st.Perm != rwr {
		t.Fatalf("held %+v after upgrade", st)
	}
	if err := lock.Update(fpl.ReadShared); err != nil {
		t.Fatal(err)
	}
	if st, _ := fpl.Query(image, false); st.Perm != fpl.PermConsistentRead || st.Unshared != 0 {
		t.Fatalf("held %+v after downgrade", st)
	}
}

func TestQEMUIsRefusedWhileGoHolds(t *testing.T) {
	image := newImage(t)
	open := func() ([]byte, error) {
		return exec.Command(tool(t, "qemu-io"), "-f", "qcow2", "-c", "quit", image).CombinedOutput()
	}
	lock, err := fpl.Acquire(image, fpl.Write)
	if err != nil {
		t.Fatal(err)
	}
	out, err := open()
	if err == nil || !strings.Contains(string(out), "Failed to get \"write\" lock") {
		t.Fatalf("qemu-io beside a Go writer: %v: %s", err, out)
	}
	if err := lock.Release(); err != nil {
		t.Fatal(err)
	}
	if out, err := open(); err != nil {
		t.Fatalf("qemu-io after release: %v: %s", err, out)
	}
}

func TestExactAndExplicitPermissions(t *testing.T) {
	image := newImage(t)
	mode := fpl.Mode{Perm: fpl.PermConsistentRead | fpl.PermWriteUnchanged, Shared: fpl.PermAll}
	for _, exact := range []bool{false, true} {
		mode.Exact = exact
		lock, err := fpl.Acquire(image, mode)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := fpl.Query(image, false)
		// QEMU locks byte 102; the strict rules ask for write (101) instead.
		want := fpl.PermConsistentRead | fpl.PermWrite
		if exact {
			want = fpl.PermConsistentRead | fpl.PermWriteUnchanged
		}
		if st.Perm != want {
			t.Fatalf("exact=%v: held %v, want %v", exact, st.Perm, want)
		}
		lock.Release()
	}
}

func TestAcquireFileOutlivesTheFile(t *testing.T) {
	image := newImage(t)
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := fpl.AcquireFile(f, fpl.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if st, _ := fpl.Query(image, false); st.Unshared != fpl.PermAll {
		t.Fatalf("held %+v after closing the file", st)
	}
	conflict(t, fpl.Check(image, fpl.ReadShared))
	if err := lock.Release(); err != nil {
		t.Fatal(err)
	}
	if st, _ := fpl.Query(image, false); st.InUse() {
		t.Fatalf("held %+v after release", st)
	}
}

func TestErrorsWrapTheErrno(t *testing.T) {
	dir := t.TempDir()
	_, err := fpl.Acquire(filepath.Join(dir, "missing.img"), fpl.Read)
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("missing image: %v", err)
	}
	if !strings.Contains(err.Error(), "missing.img") {
		t.Fatalf("message %q does not name the image", err)
	}
	if _, err := fpl.Query(dir, false); !errors.Is(err, syscall.EISDIR) {
		t.Fatalf("directory: %v", err)
	}
	if err := fpl.Check(newImage(t), fpl.Mode{Perm: 0x10}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("unknown bit: %v", err)
	}
}

// Goroutines move between OS threads: each call owns its error, so many
// goroutines lock and query at once, and conflict with each other as
// processes do.
func TestGoroutines(t *testing.T) {
	shared := newImage(t)
	var holding int32
	var wg sync.WaitGroup
	errs := make(chan error, 8*50*3)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := filepath.Join(t.TempDir(), "own.img")
			if err := os.WriteFile(own, nil, 0o644); err != nil {
				errs <- err
				return
			}
			for i := 0; i < 50; i++ {
				lock, err := fpl.Acquire(own, fpl.Write)
				if err != nil {
					errs <- err
					return
				}
				if err := lock.Update(fpl.ReadShared); err != nil {
					errs <- err
				}
				if err := lock.Release(); err != nil {
					errs <- err
				}
				// Exclusive on the shared image: at most one goroutine wins,
				// the others see a conflict naming this process (or nobody,
				// when the winner released before the holder was looked up).
				if l, err := fpl.Acquire(shared, fpl.Exclusive); err == nil {
					if n := atomic.AddInt32(&holding, 1); n != 1 {
						errs <- fmt.Errorf("%d goroutines hold the image exclusively", n)
					}
					atomic.AddInt32(&holding, -1)
					l.Release()
				} else if e := (*fpl.Error)(nil); !errors.As(err, &e) || e.Errno != syscall.EAGAIN || (e.Holder != os.Getpid() && e.Holder != 0) {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// The README's example, run as written in a folder holding vm.qcow2: free,
// then held by QEMU.
func TestReadmeExample(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "example")
	if out, err := exec.Command("go", "build", "-o", exe, "./example").CombinedOutput(); err != nil {
		t.Fatalf("go build ./example: %v\n%s", err, out)
	}
	image := filepath.Join(dir, "vm.qcow2")
	if out, err := exec.Command(tool(t, "qemu-img"), "create", "-q", "-f", "qcow2", image, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	run := func() (string, int) {
		cmd := exec.Command(exe)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	out, code := run()
	if code != 0 || !regexp.MustCompile(`^held by example \(pid [1-9][0-9]*\)\n$`).MatchString(out) {
		t.Fatalf("free image: exit %d: %q", code, out)
	}
	qemu := holdWithQEMU(t, image, false)
	out, code = run()
	want := fmt.Sprintf("in use (byte 201, pid %d):\nFailed to get \"write\" lock (held by qemu-io, pid %d)\nIs another process using the image [vm.qcow2]?\n", qemu.Process.Pid, qemu.Process.Pid)
	if code != 75 || out != want {
		t.Fatalf("held image: exit %d: %q, want %q", code, out, want)
	}
}

// AcquireWait (libfpl 1.1) gives up after its timeout with the last
// conflict, holder named, and takes the image once qemu-io quits (and not
// before: it waited).
func TestAcquireWaitWaitsForQEMUToQuit(t *testing.T) {
	image := newImage(t)
	qemu := holdWithQEMU(t, image, false)
	start := time.Now()
	_, err := fpl.AcquireWait(image, fpl.Write, 300*time.Millisecond)
	e := conflict(t, err)
	if time.Since(start) < 300*time.Millisecond {
		t.Fatalf("gave up after %v, before its timeout", time.Since(start))
	}
	if e.Holder != qemu.Process.Pid {
		t.Fatalf("holder %d, want qemu-io %d", e.Holder, qemu.Process.Pid)
	}
	go func() {
		time.Sleep(400 * time.Millisecond)
		qemu.Process.Kill()
		qemu.Wait()
	}()
	start = time.Now()
	lock, err := fpl.AcquireWait(image, fpl.Write, 20*time.Second)
	if err != nil {
		t.Fatalf("AcquireWait once qemu-io is gone: %v", err)
	}
	if time.Since(start) < 400*time.Millisecond {
		t.Fatalf("took the image after %v, while qemu-io still held it", time.Since(start))
	}
	if err := lock.Release(); err != nil {
		t.Fatal(err)
	}
}
