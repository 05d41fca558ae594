// Package pionlog adapts pion's leveled loggers (github.com/pion/logging,
// used by pion/webrtc, pion/ice and pion/turn) to log/slog. Every pion
// message becomes a debug record, whatever level pion gave it: pion logs
// routine network churn (a STUN timeout, a candidate that failed) as
// warnings and errors, which would alarm a user and say nothing the call
// or relay code doesn't report itself. Trace messages are dropped. Each
// record carries the pion scope ("ice", "turn", "pc", …) as "pion".
package pionlog

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// Factory returns a pion LoggerFactory that logs to l at debug level. A
// nil l discards everything.
func Factory(l *slog.Logger) logging.LoggerFactory {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return factory{l}
}

type factory struct{ l *slog.Logger }

func (f factory) NewLogger(scope string) logging.LeveledLogger {
	return logger{l: f.l, scope: scope}
}

// logger keeps pion's level as the attribute "pion_level", so debugging
// can still tell pion's errors from its chatter.
type logger struct {
	l     *slog.Logger
	scope string
}

func (g logger) log(level, msg string) {
	if !g.l.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	g.l.Debug(msg, "pion", g.scope, "pion_level", level)
}

func (g logger) logf(level, format string, args ...any) {
	if !g.l.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	g.l.Debug(fmt.Sprintf(format, args...), "pion", g.scope, "pion_level", level)
}

func (logger) Trace(string)          {}
func (logger) Tracef(string, ...any) {}

func (g logger) Debug(msg string)                  { g.log("debug", msg) }
func (g logger) Debugf(format string, args ...any) { g.logf("debug", format, args...) }
func (g logger) Info(msg string)                   { g.log("info", msg) }
func (g logger) Infof(format string, args ...any)  { g.logf("info", format, args...) }
func (g logger) Warn(msg string)                   { g.log("warn", msg) }
func (g logger) Warnf(format string, args ...any)  { g.logf("warn", format, args...) }
func (g logger) Error(msg string)                  { g.log("error", msg) }
func (g logger) Errorf(format string, args ...any) { g.logf("error", format, args...) }
