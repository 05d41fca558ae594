package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/kinmesh/kinmesh/node"
)

// Client verbs for the phone number link and contact discovery: thin
// calls to the daemon's local API (docs/api.md, "Phone number and contact
// discovery").

// phoneCommands are the verbs of this file, for commands().
func phoneCommands() []command {
	return []command{
		{"phone", "link a phone number to the account (verify, code, unlink)", runPhone},
		{"discover", "find which phone numbers belong to kinmesh users", runDiscover},
	}
}

// phoneArgs parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func phoneArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseWithArgs(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

const phoneSynopsis = `phone --data DIR [status | verify NUMBER | code CODE | unlink]

Links an optional phone number to the account, so people who have it in
their address book can find you (kinmesh discover). "verify" asks one of
your home relays to text a code to NUMBER (international form: +, country
code, number; spaces are fine); "code" submits it (valid 10 minutes, 5
tries). The relay sees the number to send the SMS and keeps only a keyed
hash of it. "unlink" removes the number from the relay. Without a verb:
the status.`

func runPhone(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("phone", phoneSynopsis, stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
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
		method, path = http.MethodGet, "/v1/phone"
	case "verify":
		if len(rest) == 0 {
			return fmt.Errorf("%w: say which number: kinmesh phone verify +351 912 345 678", errUsage)
		}
		method, path, body = http.MethodPost, "/v1/phone", map[string]string{"number": strings.Join(rest, " ")}
	case "code":
		if len(rest) == 0 {
			return fmt.Errorf("%w: give the code you received: kinmesh phone code 123456", errUsage)
		}
		method, path, body = http.MethodPost, "/v1/phone/verify", map[string]string{"code": strings.Join(rest, "")}
	case "unlink":
		method, path = http.MethodDelete, "/v1/phone"
	default:
		return fmt.Errorf("%w: unknown verb %q: want status, verify, code or unlink", errUsage, verb)
	}
	if verb != "verify" && verb != "code" && len(rest) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out struct {
		Phone node.PhoneStatus `json:"phone"`
	}
	if err := c.do(ctx, method, path, body, &out); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	p := out.Phone
	switch {
	case p.Verified:
		fmt.Fprintf(stdout, "phone %s verified on relay %s", p.Number, p.Relay)
		if p.VerifiedAt != nil {
			fmt.Fprintf(stdout, " since %s", p.VerifiedAt.Local().Format("2006-01-02 15:04"))
		}
		fmt.Fprintln(stdout)
		if p.NeedsReverification {
			fmt.Fprintf(stdout, "relay %s is no home relay any more: verify the number again to move the link and the backup (kinmesh phone verify %s)\n", p.Relay, p.Number)
		}
	case verb == "unlink":
		fmt.Fprintln(stdout, "phone number unlinked")
	case p.Pending == nil:
		fmt.Fprintln(stdout, "no phone number linked")
	}
	if q := p.Pending; q != nil {
		fmt.Fprintf(stdout, "code sent to %s, valid until %s, %d attempts left: kinmesh phone code <code>\n",
			q.Number, q.CodeExpiresAt.Local().Format("15:04"), q.AttemptsLeft)
	}
	return nil
}

const discoverSynopsis = `discover --data DIR [--file FILE] [--add] [NUMBER]...

Finds which of the numbers (international form; one argument each, or one
per line in FILE, "-" for stdin) belong to kinmesh users, privately: the
relay only ever sees blinded values, never the numbers. Needs a verified
number of your own (kinmesh phone). --add adds every match as a contact.`

func runDiscover(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("discover", discoverSynopsis, stdout)
	client := clientFlags(fs)
	file := fs.String("file", "", `read numbers from FILE, one per line ("-": stdin)`)
	add := fs.Bool("add", false, "add every match as a contact")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	numbers, err := phoneArgs(fs, args)
	if err != nil {
		return err
	}
	if *file != "" {
		more, err := readNumbers(*file)
		if err != nil {
			return err
		}
		numbers = append(numbers, more...)
	}
	if len(numbers) == 0 {
		return fmt.Errorf("%w: give numbers: kinmesh discover +351912345678 +447700900123 (or --file FILE)", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var res node.DiscoveryResult
	if err := c.do(ctx, http.MethodPost, "/v1/discovery", map[string][]string{"numbers": numbers}, &res); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		for _, m := range res.Matches {
			known := ""
			if m.Contact.Known {
				known = "  (already a contact)"
			}
			fmt.Fprintf(stdout, "%-16s %-20s %s%s\n", m.Number, m.Contact.Name, m.Contact.ID, known)
		}
		fmt.Fprintf(stdout, "%d of %d numbers are kinmesh users\n", len(res.Matches), len(numbers)-len(res.Invalid))
		for _, s := range res.Invalid {
			fmt.Fprintf(stdout, "skipped %q: not an international number (+ and the country code)\n", s)
		}
	}
	if !*add {
		return nil
	}
	var errs []error
	for _, m := range res.Matches {
		if m.Contact.Known {
			continue
		}
		var out struct{ Contact node.Contact }
		if err := c.do(ctx, http.MethodPost, "/v1/contacts", map[string]string{"invite": m.Contact.Invite}, &out); err != nil {
			errs = append(errs, fmt.Errorf("add %s: %w", m.Contact.Name, err))
			continue
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "added %s (%s)\n", out.Contact.Name, out.Contact.ID)
		}
	}
	return errors.Join(errs...)
}

// readNumbers reads one number per line ("#" starts a comment).
func readNumbers(path string) ([]string, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var out []string
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}
