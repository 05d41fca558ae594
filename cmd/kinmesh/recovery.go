package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/kinmesh/kinmesh/node"
)

// Client verbs for account recovery and the profile photo: thin calls to
// the daemon's local API (docs/api.md, "Account recovery" and "Profile
// photo").

// recoveryCommands are the verbs of this file and photo.go, for
// commands().
func recoveryCommands() []command {
	return []command{
		{"recovery", "back the account up for recovery, or recover it on a new device", runRecovery},
		{"photo", "set, clear or fetch a profile photo", runPhoto},
	}
}

const recoverySynopsis = `recovery --data DIR [status | on | off | backup | start NUMBER | finish]

Account recovery keeps an encrypted backup of the account (keys, profile,
contacts, blocks, settings; not messages) on the relay holding your
verified phone number (kinmesh phone). Only a recovery secret you write
down opens it.

  status              whether backups are on, when the last one was taken
  on                  turn backups on (or replace the secret): prints the
                      secret ONCE; write it down, it is stored nowhere
  off                 delete the backups from the relays
  backup              upload a backup now
  start NUMBER        on a new device without an account: the relay texts
                      a code to NUMBER (--relay names the relay, if the
                      number was verified on another than the first)
  finish --code CODE --secret SECRET
                      restore the account (--secret - reads it from stdin;
                      after a wrong secret, --code may be left out)`

func runRecovery(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("recovery", recoverySynopsis, stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	relay := fs.String("relay", "", "start: the relay to ask (peer id or multiaddr of a bootstrap relay)")
	code := fs.String("code", "", "finish: the code texted to the number")
	secret := fs.String("secret", "", `finish: the recovery secret ("-": read from stdin)`)
	pos, err := phoneArgs(fs, args)
	if err != nil {
		return err
	}
	verb, rest := "status", pos
	if len(pos) > 0 {
		verb, rest = pos[0], pos[1:]
	}
	var (
		method, path string
		body         any
	)
	switch verb {
	case "status":
		method, path = http.MethodGet, "/v1/recovery"
	case "on":
		method, path = http.MethodPost, "/v1/recovery"
	case "off":
		method, path = http.MethodDelete, "/v1/recovery"
	case "backup":
		method, path = http.MethodPost, "/v1/recovery/backup"
	case "start":
		if len(rest) == 0 {
			return fmt.Errorf("%w: say which number: kinmesh recovery start +351 912 345 678", errUsage)
		}
		method, path = http.MethodPost, "/v1/recovery/start"
		body = map[string]string{"number": strings.Join(rest, " "), "relay": *relay}
		rest = nil
	case "finish":
		s := *secret
		if s == "-" {
			b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<10))
			if err != nil {
				return err
			}
			s = strings.TrimSpace(string(b))
		}
		if s == "" {
			return fmt.Errorf("%w: give the recovery secret: kinmesh recovery finish --code 123456 --secret ABCD-EFGH-…", errUsage)
		}
		method, path = http.MethodPost, "/v1/recovery/finish"
		body = map[string]string{"code": *code, "secret": s}
	default:
		return fmt.Errorf("%w: unknown verb %q: want status, on, off, backup, start or finish", errUsage, verb)
	}
	if len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	c, err := client()
	if err != nil {
		return err
	}
	raw := json.RawMessage{}
	if err := c.do(ctx, method, path, body, &raw); err != nil {
		return err
	}
	if *asJSON {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	switch verb {
	case "on":
		var on node.RecoveryEnabled
		if err := json.Unmarshal(raw, &on); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "account recovery is on. Your recovery secret:\n\n    %s\n\n", on.Secret)
		fmt.Fprintln(stdout, "Write it down and keep it safe: it is shown this once, stored nowhere, and")
		fmt.Fprintln(stdout, "with your phone number it restores your account on a new device.")
		printRecovery(stdout, on.Recovery)
	case "start":
		var st struct{ Recovery node.RecoveryStart }
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "relay %s texted a code to %s, valid until %s (%d attempts):\n  kinmesh recovery finish --code <code> --secret <your recovery secret>\n",
			st.Recovery.Relay, st.Recovery.Number, st.Recovery.CodeExpiresAt.Local().Format("15:04"), st.Recovery.AttemptsLeft)
	case "finish":
		var r node.Restored
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "restored account %s (%s) from the backup of %s: %d contacts, %d blocks; %d contacts told about this device\n",
			r.Account.Name, r.Account.ID, r.BackupAt.Local().Format("2006-01-02 15:04"), r.Contacts, r.Blocks, r.Introduced)
		if len(r.PrekeysPending) > 0 {
			fmt.Fprintf(stdout, "old prekeys still to remove from %d relays (the node keeps trying)\n", len(r.PrekeysPending))
		}
	default:
		var st struct{ Recovery *node.RecoveryStatus }
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		printRecovery(stdout, st.Recovery)
	}
	return nil
}

func printRecovery(w io.Writer, st *node.RecoveryStatus) {
	if st == nil {
		return
	}
	if !st.Enabled {
		fmt.Fprint(w, "account recovery is off")
		if !st.PhoneVerified {
			fmt.Fprint(w, " (it needs a verified phone number: kinmesh phone verify NUMBER)")
		}
		fmt.Fprintln(w)
		return
	}
	if st.LastBackup != nil {
		fmt.Fprintf(w, "last backup %s, %d bytes\n", st.LastBackup.Local().Format("2006-01-02 15:04"), st.Size)
	} else {
		fmt.Fprintln(w, "no backup uploaded yet")
	}
	for _, r := range st.Relays {
		fmt.Fprintf(w, "  held by relay %s until %s\n", r.Relay, r.ExpiresAt.Local().Format("2006-01-02"))
	}
	if st.Error != "" {
		fmt.Fprintf(w, "last upload failed: %s\n", st.Error)
	}
	if st.PhoneNeedsReverification {
		fmt.Fprintln(w, "the backup stays on a relay that is no home relay any more until you verify your number again (kinmesh phone)")
	}
}
