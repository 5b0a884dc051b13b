package fpl_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"fpl"
)

const (
	withoutLibfpl = "TestWithoutLibfplEveryCallFailsWithErrNotInstalled"
	firstUse      = "TestFirstUseFromManyGoroutinesLoadsLibfplOnce"
)

// FPL_TEST_FIRST_USE set: this process has not used libfpl yet, and many
// goroutines start at once (under go test -race, the loading is checked
// for data races). Without it, the test runs itself in such a process.
func TestFirstUseFromManyGoroutinesLoadsLibfplOnce(t *testing.T) {
	if os.Getenv("FPL_TEST_FIRST_USE") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^"+firstUse+"$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "FPL_TEST_FIRST_USE=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: "+firstUse) {
			t.Fatalf("%v:\n%s", err, out)
		}
		return
	}
	image := newImage(t)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%2 == 0 {
				if v := fpl.Version(); v != fpl.HeaderVersion {
					t.Errorf("Version() = %q, want %s", v, fpl.HeaderVersion)
				}
			} else if err := fpl.Check(image, fpl.Read); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
}

// runWithoutLibfpl runs withoutLibfpl again in a process of its own, with
// FPL_LIBRARY set to library and FPL_TEST_NO_LIBRARY to words the error
// must contain.
func runWithoutLibfpl(t *testing.T, library, words string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+withoutLibfpl+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "FPL_LIBRARY="+library, "FPL_TEST_NO_LIBRARY="+words)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+withoutLibfpl) {
		t.Fatalf("FPL_LIBRARY=%s: %v:\n%s", library, err, out)
	}
}

// With FPL_TEST_NO_LIBRARY set, this process must find no usable libfpl
// (FPL_LIBRARY names no library, or none is installed): every call says
// so with an error wrapping fpl.ErrNotInstalled that contains the words in
// FPL_TEST_NO_LIBRARY (what dlopen or dlsym said). Without it, the test
// runs itself in such processes.
func TestWithoutLibfplEveryCallFailsWithErrNotInstalled(t *testing.T) {
	words := os.Getenv("FPL_TEST_NO_LIBRARY")
	if words == "" {
		runWithoutLibfpl(t, filepath.Join(t.TempDir(), "libfpl.so.1"), "No such file or directory")
		// A library that is not libfpl is refused by name.
		runWithoutLibfpl(t, "libc.so.6", "libc.so.6 has no fpl_acquire")
		return
	}
	library, explicit := os.LookupEnv("FPL_LIBRARY")
	want := "fpl: cannot load libfpl.so.1 (dlopen: "
	if explicit && library != "" {
		want = "fpl: cannot load FPL_LIBRARY=" + library + " (dlopen: "
	}
	if strings.Contains(words, " has no ") {
		want = "fpl: " + words
	}
	f, err := os.CreateTemp(t.TempDir(), "image")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// First use from several goroutines at once: each gets the answer of
	// the one attempt to load libfpl.
	calls := map[string]func() error{
		"Load":  fpl.Load,
		"Check": func() error { return fpl.Check(f.Name(), fpl.Read) },
		"Acquire": func() error {
			lock, err := fpl.Acquire(f.Name(), fpl.Write)
			if lock != nil {
				t.Error("Acquire gave a lock")
			}
			return err
		},
		"AcquireWait": func() error {
			lock, err := fpl.AcquireWait(f.Name(), fpl.Write, time.Second)
			if lock != nil {
				t.Error("AcquireWait gave a lock")
			}
			return err
		},
		"AcquireFile": func() error {
			lock, err := fpl.AcquireFile(f, fpl.Read)
			if lock != nil {
				t.Error("AcquireFile gave a lock")
			}
			return err
		},
		"Query": func() error {
			st, err := fpl.Query(f.Name(), true)
			if st.InUse() || st.Holders != nil {
				t.Errorf("Query gave %+v", st)
			}
			return err
		},
		"QueryWith": func() error {
			_, err := fpl.QueryWith(f.Name(), fpl.Inspect{Holders: true, Openers: true})
			return err
		},
		"QueryMany": func() error {
			r := fpl.QueryMany([]string{f.Name(), f.Name()}, true)
			if len(r) != 2 || r[0].Err == nil || r[1].Err != r[0].Err {
				t.Errorf("QueryMany gave %+v", r)
				return nil
			}
			return r[0].Err
		},
		"QueryManyWith": func() error {
			return fpl.QueryManyWith([]string{f.Name()}, fpl.Inspect{Openers: true})[0].Err
		},
		"Chain": func() error {
			members, err := fpl.Chain(f.Name(), fpl.Read)
			if members != nil {
				t.Errorf("Chain gave %+v", members)
			}
			return err
		},
	}
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for name, call := range calls {
		wg.Add(1)
		go func(name string, call func() error) {
			defer wg.Done()
			err := call()
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		}(name, call)
	}
	wg.Wait()
	if v := fpl.Version(); v != "" {
		t.Errorf("Version() = %q without libfpl", v)
	}
	first := errs["Load"]
	if first == nil {
		t.Fatalf("libfpl was loaded (FPL_LIBRARY=%q): is libfpl.so.1 installed where the loader finds it?", library)
	}
	message := first.Error()
	for _, w := range []string{want, words, "install libfpl", "make install", "set FPL_LIBRARY to the path of libfpl.so.1"} {
		if !strings.Contains(message, w) {
			t.Errorf("the message does not say %q:\n%s", w, message)
		}
	}
	for name, err := range errs {
		if !errors.Is(err, fpl.ErrNotInstalled) {
			t.Errorf("%s: %v (%T) is not fpl.ErrNotInstalled", name, err, err)
		} else if err.Error() != message {
			t.Errorf("%s: %q, not Load's %q", name, err, message)
		}
	}
	var e *fpl.Error
	if errors.As(first, &e) {
		t.Errorf("an *fpl.Error, as if libfpl had answered: %+v", e)
	}
}
