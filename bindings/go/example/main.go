package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"fpl"
)

func main() {
	lock, err := fpl.Acquire("vm.qcow2", fpl.Write)
	if errors.Is(err, syscall.EAGAIN) {
		var e *fpl.Error
		errors.As(err, &e)
		fmt.Printf("in use (byte %d, pid %d):\n%s\n", e.Byte, e.Holder, e.Message)
		os.Exit(75)
	} else if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer lock.Release()

	// ... write vm.qcow2 ...
	status, err := fpl.Query("vm.qcow2", true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, h := range status.Holders {
		fmt.Printf("held by %s (pid %d)\n", h.Name, h.PID)
	}
}
