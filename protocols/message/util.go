package message

import (
	"encoding/json"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

func listPrefix(p string) storage.ListOptions { return storage.ListOptions{Prefix: p} }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func timeFromMs(ms int64) time.Time { return time.UnixMilli(ms) }

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
