package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/kinmesh/kinmesh/node"
)

// The profile photo verb (docs/api.md, "Profile photo"); recoveryCommands
// registers it.

const photoSynopsis = `photo --data DIR [set FILE | clear | get [CONTACT] --out FILE]

The profile photo (JPEG or PNG, at most 512 KiB and 4096×4096 pixels) is
encrypted and stored on your home relays; your contacts open it with the
key in your signed contact record. "get" writes your photo, or a
contact's, to FILE ("-": stdout).`

func runPhoto(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("photo", photoSynopsis, stdout)
	client := clientFlags(fs)
	outFile := fs.String("out", "", `get: where to write the photo ("-": stdout)`)
	pos, err := phoneArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return fmt.Errorf("%w: want set FILE, clear or get [CONTACT] --out FILE", errUsage)
	}
	verb, rest := pos[0], pos[1:]
	var (
		method, path string
		body         []byte
	)
	switch verb {
	case "set":
		if len(rest) != 1 {
			return fmt.Errorf("%w: give one image file: kinmesh photo set me.jpg", errUsage)
		}
		if body, err = os.ReadFile(rest[0]); err != nil {
			return err
		}
		method, path = http.MethodPut, "/v1/account/photo"
	case "clear":
		if len(rest) > 0 {
			return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[0])
		}
		method, path = http.MethodDelete, "/v1/account/photo"
	case "get":
		if len(rest) > 1 {
			return fmt.Errorf("%w: unexpected argument %q", errUsage, rest[1])
		}
		if *outFile == "" {
			return fmt.Errorf("%w: say where to write it: --out FILE (or --out - for stdout)", errUsage)
		}
		method, path = http.MethodGet, "/v1/account/photo"
		if len(rest) == 1 {
			path = "/v1/contacts/" + rest[0] + "/photo"
		}
	default:
		return fmt.Errorf("%w: unknown verb %q: want set, clear or get", errUsage, verb)
	}
	c, err := client()
	if err != nil {
		return err
	}
	data, typ, err := c.doRaw(ctx, method, path, body)
	if err != nil {
		return err
	}
	switch verb {
	case "set":
		var out struct{ Photo node.PhotoInfo }
		if err := json.Unmarshal(data, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "profile photo set: %s, %d bytes, blob %s on your home relays\n", out.Photo.Type, out.Photo.Size, out.Photo.Blob)
	case "clear":
		fmt.Fprintln(stdout, "profile photo cleared")
	case "get":
		if *outFile == "-" {
			_, err = stdout.Write(data)
			return err
		}
		if err := os.WriteFile(*outFile, data, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%s, %d bytes)\n", *outFile, typ, len(data))
	}
	return nil
}

// doRaw sends body as raw bytes (a photo) and returns the raw response
// and its content type. API errors come back as "<code>: <message>".
func (c *apiClient) doRaw(ctx context.Context, method, path string, body []byte) ([]byte, string, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", http.DetectContentType(body))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("reach the daemon at %s: %w (is `kinmesh node` running?)", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return nil, "", fmt.Errorf("%s: %s", e.Error.Code, e.Error.Message)
		}
		return nil, "", fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	return b, resp.Header.Get("Content-Type"), nil
}
