package main

import (
	"context"
	"errors"
	"io"
	"testing"
)

// TestCallVerbUsage: the call verbs refuse a wrong number of arguments
// before reaching a daemon. TestCLICalls drives them against real ones.
func TestCallVerbUsage(t *testing.T) {
	api := []string{"--api", "127.0.0.1:1", "--token", "tok"}
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		run  func(context.Context, []string, io.Writer, io.Writer) error
		args []string
	}{
		{"call nobody", runCall, nil},
		{"call two", runCall, []string{"a", "b"}},
		{"answer nothing", runAnswer, nil},
		{"hang up two", runHangup, []string{"a", "b"}},
		{"show two", runCalls, []string{"a", "b"}},
	} {
		if err := tt.run(ctx, append(tt.args, api...), io.Discard, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%s: %v, want a usage error", tt.name, err)
		}
	}
	if len(callsCommands()) != 4 {
		t.Error("callsCommands lists the wrong verbs")
	}
}
