// Package bench holds kinmesh's whole-system benchmarks: figures that need
// real relays and devices rather than one package. Each figure is reported
// as a ratio against a baseline measured in the same run (see
// docs/benchmarks.md), so a slower or faster machine doesn't move it.
package bench
