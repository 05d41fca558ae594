package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kinmesh/kinmesh/protocols/moments"
)

// Client verbs for moments: thin calls to the daemon's local API
// (docs/api.md, "Moments").

// momentsCommands are the verbs of this file, for commands().
func momentsCommands() []command {
	return []command{
		{"moments", "post moments, read the feed, like, comment and delete (kinmesh moments post …)", runMoments},
	}
}

const momentsUsage = `moments [feed|post|show|like|unlike|comment|delete|media] … --data DIR

  moments [feed] [--limit N] [--cursor C] [--json]   the feed, newest first
  moments post TEXT… [--media FILE]…                 post a moment (photos: image/*, videos: video/*)
  moments show ID [--json]                           one moment with its likes and comments
  moments like ID | unlike ID                        like a moment, or take the like back
  moments comment ID TEXT…                           comment on a moment
  moments delete ID [--comment CID]                  delete your moment everywhere (or your comment)
  moments media ID N --out FILE                      fetch and decrypt photo or video N (from 0)`

// momentArgs parses flags that may come before or after the positional
// arguments, and returns the positional ones.
func momentArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v (see kinmesh moments --help)", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

type momentReply struct {
	Moment moments.Moment `json:"moment"`
}

func runMoments(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("moments", momentsUsage, stdout)
	client := clientFlags(fs)
	var media []string
	fs.Func("media", "a photo or video file to post (repeat for several)", func(s string) error {
		media = append(media, s)
		return nil
	})
	limit := fs.Int("limit", 20, "feed: moments per page (1 to 200)")
	cursor := fs.String("cursor", "", "feed: the page after this cursor (printed at the end of a page)")
	commentID := fs.String("comment", "", "delete: the id of your comment to delete, rather than the moment")
	outFile := fs.String("out", "", "media: the file to write")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	pos, err := momentArgs(fs, args)
	if err != nil {
		return err
	}
	verb := "feed"
	if len(pos) > 0 {
		verb, pos = pos[0], pos[1:]
	}
	need := func(n int, what string) error {
		if len(pos) < n {
			return fmt.Errorf("%w: kinmesh moments %s needs %s", errUsage, verb, what)
		}
		return nil
	}
	switch verb {
	case "feed":
		err = need(0, "")
	case "post":
		if len(pos) == 0 && len(media) == 0 {
			err = fmt.Errorf("%w: kinmesh moments post needs text or --media FILE", errUsage)
		}
	case "show", "like", "unlike":
		err = need(1, "a moment id")
	case "delete":
		err = need(1, "a moment id")
	case "comment":
		err = need(2, "a moment id and the comment's text")
	case "media":
		if err = need(2, "a moment id and the medium's number (from 0)"); err == nil && *outFile == "" {
			err = fmt.Errorf("%w: kinmesh moments media needs --out FILE", errUsage)
		}
	default:
		err = fmt.Errorf("%w: unknown moments verb %q (feed, post, show, like, unlike, comment, delete, media)", errUsage, verb)
	}
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	path := func(parts ...string) string {
		p := "/v1/moments"
		for _, s := range parts {
			p += "/" + url.PathEscape(s)
		}
		return p
	}
	switch verb {
	case "feed":
		q := url.Values{"limit": {strconv.Itoa(*limit)}}
		if *cursor != "" {
			q.Set("cursor", *cursor)
		}
		var out struct {
			Moments []moments.Moment `json:"moments"`
			Next    string           `json:"next"`
		}
		if err := c.do(ctx, http.MethodGet, "/v1/moments?"+q.Encode(), nil, &out); err != nil {
			return err
		}
		if *asJSON {
			return writeMomentJSON(stdout, out)
		}
		for _, m := range out.Moments {
			writeMomentLine(stdout, m)
		}
		if out.Next != "" {
			fmt.Fprintf(stdout, "more: kinmesh moments feed --cursor %s\n", out.Next)
		}
		return nil
	case "post":
		type medium struct {
			Type string `json:"type"`
			Data []byte `json:"data"`
		}
		var ms []medium
		for _, f := range media {
			b, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("read %s: %w", f, err)
			}
			ms = append(ms, medium{Type: mediaType(f, b), Data: b})
		}
		var out momentReply
		if err := c.do(ctx, http.MethodPost, "/v1/moments", map[string]any{"text": strings.Join(pos, " "), "media": ms}, &out); err != nil {
			return err
		}
		if *asJSON {
			return writeMomentJSON(stdout, out)
		}
		fmt.Fprintf(stdout, "moment %s posted (%d media)\n", out.Moment.ID, len(out.Moment.Media))
		return nil
	case "show":
		var out momentReply
		if err := c.do(ctx, http.MethodGet, path(pos[0]), nil, &out); err != nil {
			return err
		}
		if *asJSON {
			return writeMomentJSON(stdout, out)
		}
		writeMomentLine(stdout, out.Moment)
		for _, l := range out.Moment.Likes {
			fmt.Fprintf(stdout, "  ♥ %s (%s)\n", l.Name, l.From)
		}
		for _, cm := range out.Moment.Comments {
			fmt.Fprintf(stdout, "  %s %s: %s\n", cm.ID, cm.Name, cm.Text)
		}
		for _, md := range out.Moment.Media {
			fmt.Fprintf(stdout, "  media %d: %s, %d bytes\n", md.N, md.Type, md.Size)
		}
		return nil
	case "like", "unlike":
		method := http.MethodPost
		if verb == "unlike" {
			method = http.MethodDelete
		}
		var out momentReply
		if err := c.do(ctx, method, path(pos[0], "likes"), nil, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "moment %s: %d likes\n", out.Moment.ID, len(out.Moment.Likes))
		return nil
	case "comment":
		var out struct {
			Comment moments.Comment `json:"comment"`
		}
		if err := c.do(ctx, http.MethodPost, path(pos[0], "comments"), map[string]string{"text": strings.Join(pos[1:], " ")}, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "comment %s posted\n", out.Comment.ID)
		return nil
	case "delete":
		if *commentID != "" {
			if err := c.do(ctx, http.MethodDelete, path(pos[0], "comments", *commentID), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "comment %s deleted\n", *commentID)
			return nil
		}
		if err := c.do(ctx, http.MethodDelete, path(pos[0]), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "moment %s deleted\n", pos[0])
		return nil
	case "media":
		typ, n, err := c.download(ctx, path(pos[0], "media", pos[1]), *outFile)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s, %d bytes\n", *outFile, typ, n)
		return nil
	}
	return nil
}

// mediaType is a file's MIME type, by extension, else by its bytes.
func mediaType(name string, b []byte) string {
	if t := mime.TypeByExtension(strings.ToLower(filepath.Ext(name))); t != "" {
		t, _, _ = mime.ParseMediaType(t)
		return t
	}
	t, _, _ := mime.ParseMediaType(http.DetectContentType(b))
	return t
}

func writeMomentLine(w io.Writer, m moments.Moment) {
	who := m.Author
	if m.Mine {
		who = "you"
	}
	fmt.Fprintf(w, "%s %s %s %q", m.ID, m.CreatedAt.Local().Format("2006-01-02 15:04"), who, m.Text)
	fmt.Fprintf(w, " (%d likes, %d comments, %d media)\n", len(m.Likes), len(m.Comments), len(m.Media))
}

func writeMomentJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// download GETs a raw body (a medium) into file; it returns its type and
// size. API errors come back as "<code>: <message>".
func (c *apiClient) download(ctx context.Context, path, file string) (string, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("reach the daemon at %s: %w (is `kinmesh node` running?)", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return "", 0, fmt.Errorf("%s: %s", e.Error.Code, e.Error.Message)
		}
		return "", 0, fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	f, err := os.Create(file)
	if err != nil {
		return "", 0, err
	}
	n, err := io.Copy(f, io.LimitReader(resp.Body, moments.MaxVideoSize+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, fmt.Errorf("write %s: %w", file, err)
	}
	return resp.Header.Get("Content-Type"), n, nil
}
