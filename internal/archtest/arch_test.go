// Package archtest holds the tests that keep kinmesh's architecture as
// DESIGN.md draws it: who may import whom, a package comment on every
// package, no global metrics registry, no fixed sleeps in tests.
package archtest

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const module = "github.com/kinmesh/kinmesh"

type pkg struct {
	ImportPath                string
	Dir                       string
	Doc                       string
	Name                      string
	Deps                      []string
	GoFiles                   []string
	TestGoFiles, XTestGoFiles []string
	TestImports, XTestImports []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

func under(path, dir string) bool {
	p := module + "/" + dir
	return path == p || strings.HasPrefix(path, p+"/")
}

// TestImportDirection checks DESIGN.md's dependency rules, transitively.
func TestImportDirection(t *testing.T) {
	rules := []struct {
		from   string
		forbid []string
		why    string
	}{
		{"node", []string{"bootstrap", "internal", "cmd"}, "a phone never links the relay server"},
		{"bootstrap", []string{"node", "internal", "cmd"}, "the relay never links the device node"},
		{"protocols", []string{"node", "bootstrap", "internal", "cmd"}, "protocols sit below node and bootstrap"},
		{"storage", []string{"protocols", "node", "bootstrap", "internal", "cmd"}, "storage knows no protocol"},
		{"protocols/e2ee", []string{"storage", "protocols/netkit", "protocols/wire"}, "e2ee is pure crypto"},
		{"internal", []string{"cmd"}, "cmd is the top"},
	}
	for _, p := range listPackages(t) {
		for _, r := range rules {
			if !under(p.ImportPath, r.from) {
				continue
			}
			for _, d := range p.Deps {
				for _, f := range r.forbid {
					if under(d, f) {
						t.Errorf("%s imports %s (%s)", p.ImportPath, d, r.why)
					}
				}
			}
		}
		if under(p.ImportPath, "protocols/e2ee") {
			for _, d := range p.Deps {
				if strings.Contains(d, "libp2p") || d == "net" || d == "net/http" {
					t.Errorf("%s imports %s: e2ee does no networking", p.ImportPath, d)
				}
			}
		}
	}
}

// TestTestImports: tests of the libraries don't reach into internal/
// either; whole-network tests live in internal/.
func TestTestImports(t *testing.T) {
	for _, p := range listPackages(t) {
		if under(p.ImportPath, "internal") || under(p.ImportPath, "cmd") {
			continue
		}
		for _, imp := range append(p.TestImports, p.XTestImports...) {
			if under(imp, "internal") {
				t.Errorf("tests of %s import %s; move the test to internal/", p.ImportPath, imp)
			}
		}
	}
}

// TestPackageComments: every package says what it is.
func TestPackageComments(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" && len(p.GoFiles) > 0 {
			t.Errorf("package %s has no package comment", p.ImportPath)
		}
	}
}

var (
	globalMetrics = regexp.MustCompile(`prometheus\.(MustRegister|Register|DefaultRegisterer|DefaultGatherer)\b`)
	fixedSleep    = regexp.MustCompile(`\btime\.Sleep\(`)
)

// TestSourceRules: libraries never touch the global metrics registry, and
// tests wait on conditions, never on fixed sleeps.
func TestSourceRules(t *testing.T) {
	for _, p := range listPackages(t) {
		check := func(files []string, re *regexp.Regexp, what string) {
			for _, f := range files {
				b, err := os.ReadFile(filepath.Join(p.Dir, f))
				if err != nil {
					t.Fatal(err)
				}
				for i, line := range strings.Split(string(b), "\n") {
					if re.MatchString(line) && !strings.Contains(line, "archtest:allow") {
						t.Errorf("%s/%s:%d: %s", p.ImportPath, f, i+1, what)
					}
				}
			}
		}
		check(p.GoFiles, globalMetrics, "uses the global Prometheus registry; take a prometheus.Registerer")
		check(append(p.TestGoFiles, p.XTestGoFiles...), fixedSleep, "time.Sleep in a test; wait on a condition instead")
	}
}
