package node

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/backup"
)

// testRelayAddr returns the full multiaddr of a made-up relay.
func testRelayAddr(t *testing.T, port int) string {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", port, id)
}

// TestMergeFormer: relays join the list once each (by peer id, whatever
// the address), never when they are homes, never when they don't parse.
func TestMergeFormer(t *testing.T) {
	at := time.Unix(1_750_000_000, 0).UTC()
	home, a, b := testRelayAddr(t, 1), testRelayAddr(t, 2), testRelayAddr(t, 3)
	aElsewhere := "/ip4/10.0.0.9/tcp/9/p2p/" + relayID(a)
	tests := []struct {
		name   string
		former []formerRelay
		more   []formerRelay
		want   []string
	}{
		{"adds", nil, []formerRelay{{Relay: a, Since: at}, {Relay: b, Since: at}}, []string{a, b}},
		{"once by peer id", []formerRelay{{Relay: a, Since: at}}, []formerRelay{{Relay: aElsewhere, Since: at.Add(time.Hour)}}, []string{a}},
		{"not a home", nil, []formerRelay{{Relay: home, Since: at}, {Relay: a, Since: at}}, []string{a}},
		{"not garbage", nil, []formerRelay{{Relay: "not an address", Since: at}, {Relay: "/ip4/1.2.3.4/tcp/1", Since: at}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeFormer(slices.Clone(tt.former), []string{home}, tt.more...)
			var relays []string
			for _, f := range got {
				relays = append(relays, f.Relay)
			}
			if !slices.Equal(relays, tt.want) {
				t.Fatalf("got %v, want %v", relays, tt.want)
			}
			for _, f := range got {
				if !f.Since.Equal(at) {
					t.Fatalf("%s listed since %v, want %v (the first listing's)", f.Relay, f.Since, at)
				}
			}
		})
	}
}

// TestBackupFormer: the backup carries the list oldest first and, past
// its cap, the most recently replaced relays.
func TestBackupFormer(t *testing.T) {
	if got := backupFormer(nil); got != nil {
		t.Fatalf("no former relays: got %v, want nil", got)
	}
	at := time.Unix(1_750_000_000, 0).UTC()
	var former []formerRelay
	for i := range backup.MaxFormerRelays + 2 {
		// Newest first, so the order must come from the times.
		former = append(former, formerRelay{Relay: testRelayAddr(t, 1000+i), Since: at.Add(-time.Duration(i) * time.Hour)})
	}
	got := backupFormer(former)
	if len(got) != backup.MaxFormerRelays {
		t.Fatalf("%d former relays in the backup, want %d", len(got), backup.MaxFormerRelays)
	}
	if !got[len(got)-1].Since.Equal(at) || !got[0].Since.Equal(at.Add(-time.Duration(backup.MaxFormerRelays-1)*time.Hour)) {
		t.Fatalf("backup carries %v … %v; want the newest %d, oldest first", got[0].Since, got[len(got)-1].Since, backup.MaxFormerRelays)
	}
	c := &backup.Contents{Identity: []byte("id"), MailboxKey: []byte("mk"), MailboxAuth: []byte("ma"), Record: []byte("rec"),
		Profile: backup.Profile{Name: "Ada"}, FormerRelays: got}
	if _, err := c.Encode(); err != nil {
		t.Fatalf("a backup with a full list of former relays: %v", err)
	}
}

// TestInUse: a former home keeps the phone link and backup only while the
// account still uses them there.
func TestInUse(t *testing.T) {
	now := time.Unix(1_750_000_000, 0).UTC()
	old, cur := testRelayAddr(t, 1), testRelayAddr(t, 2)
	oldElsewhere := "/ip4/10.0.0.9/tcp/9/p2p/" + relayID(old)
	linked := func(relay string) phoneState { return phoneState{Number: "+351912345678", Relay: relay} }
	held := func(relays ...string) *recoveryRecord {
		rec := &recoveryRecord{}
		for _, r := range relays {
			rec.Held = append(rec.Held, heldBackup{Relay: r})
		}
		return rec
	}
	tests := []struct {
		name  string
		relay string
		ph    phoneState
		rec   *recoveryRecord
		want  bool
	}{
		{"the link is here", old, linked(oldElsewhere), nil, true},
		{"the link moved, recovery off", old, linked(cur), nil, false},
		{"no link, nothing held", old, phoneState{}, held(), false},
		{"a verification in progress here", old, phoneState{PendingRelay: old, PendingExpires: now.Add(time.Minute)}, nil, true},
		{"an expired verification here", old, phoneState{PendingRelay: old, PendingExpires: now.Add(-time.Minute)}, nil, false},
		{"the link moved, the backup not yet", old, linked(cur), held(old), true},
		{"the link and the backup moved", old, linked(cur), held(old, cur), false},
		{"the backup held elsewhere only", old, linked(cur), held(cur), false},
		{"not an address", "garbage", phoneState{}, held("garbage"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inUse(tt.relay, tt.ph, tt.rec, now); got != tt.want {
				t.Fatalf("inUse = %v, want %v", got, tt.want)
			}
		})
	}
}
