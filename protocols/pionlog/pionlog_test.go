package pionlog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestFactory(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lg := Factory(l).NewLogger("ice")
	lg.Errorf("candidate %d failed", 3)
	lg.Trace("dropped")
	out := buf.String()
	for _, want := range []string{"level=DEBUG", `msg="candidate 3 failed"`, "pion=ice", "pion_level=error"} {
		if !strings.Contains(out, want) {
			t.Errorf("got %q, want it to contain %q", out, want)
		}
	}
	if strings.Contains(out, "dropped") {
		t.Errorf("trace message logged: %q", out)
	}
	buf.Reset()
	Factory(slog.New(slog.NewTextHandler(&buf, nil))).NewLogger("turn").Error("quiet")
	if buf.Len() != 0 {
		t.Errorf("logged at info level: %q", buf.String())
	}
	Factory(nil).NewLogger("x").Warn("discarded") // must not panic
}
