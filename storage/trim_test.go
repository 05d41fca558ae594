package storage_test

import (
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

func TestWithTrimInterval(t *testing.T) {
	tests := []struct {
		name       string
		busy, idle time.Duration
		ok         bool
	}{
		{"off", 0, 0, true},
		{"after writes only", time.Second, 0, true},
		{"busy and idle", time.Second, time.Minute, true},
		{"equal", time.Second, time.Second, true},
		{"negative busy", -time.Second, 0, false},
		{"negative idle", time.Second, -time.Second, false},
		{"idle shorter than busy", time.Minute, time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := storage.Open(t.TempDir(), storage.WithTrimInterval(tt.busy, tt.idle))
			if err == nil {
				if err := st.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if (err == nil) != tt.ok {
				t.Fatalf("Open with WithTrimInterval(%v, %v): got %v, want ok %v", tt.busy, tt.idle, err, tt.ok)
			}
		})
	}
}
