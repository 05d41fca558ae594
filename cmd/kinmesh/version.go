package main

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/kinmesh/kinmesh/protocols/netkit"
)

func runVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("version", "version", stdout)
	if err := parse(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kinmesh %s (%s %s/%s)\n", netkit.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
