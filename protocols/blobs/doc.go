// Package blobs implements /kinmesh/blobs/1.0.0: encrypted media (a
// moment's photos and videos, later profile photos) stored on the
// uploader's home relays by content hash, fetched on demand by whoever
// knows the id and the key, and deleted by the uploader. Relay side:
// NewService (bootstrap runs it on every relay). Device side: Seal and
// Open (the encryption), NewClient and Client.Put, Get, Delete, Has. The
// full specification is docs/protocol/blobs.md.
//
// # Blobs
//
// Seal encrypts data under a key used for that blob only into chunks of
// exactly ChunkSize (256 KiB) bytes, at most MaxChunks (208, so 52 MiB):
//
//	plaintext stream  u64be(len) || data || zero padding to n·(ChunkSize-16)
//	chunk i of n      XChaCha20-Poly1305(K, prefix || u32be(i),
//	                      piece i, AD "kinmesh/blobs/chunk/v1" || u32be(i) || u32be(n))
//	K || prefix       HKDF-SHA256(key, info "kinmesh/blobs/seal/v1"), 32 + 20 bytes
//	BlobID            SHA-256("kinmesh/blobs/id/v1" || u32be(n) || SHA-256(chunk 0) || … )
//
// A relay therefore learns a blob's size rounded up to 256 KiB and nothing
// of its content. Callers cap media by kind before sealing (moments:
// photos 10 MiB, videos 50 MiB); the relay enforces MaxBlobSize for all.
//
// Each blob has its own Ed25519 delete key, registered (public half) with
// the upload. DeleteKey derives it from an uploader's secret and the id,
// so the uploader stores nothing per blob; the relay can't link blobs to
// each other or to an account through it. A deletion proof is the delete
// key's signature over "kinmesh/blobs/delete/v1" || 0x00 || id, good on
// every relay holding the blob (a moment's tombstone carries the proofs of
// its media, and relays act on them through Service.DeleteSigned).
//
// # Message flow
//
// A stream carries one operation, then closes. Every frame is a uvarint
// length and a protobuf message (protocols/wire; pb/blobs.proto):
//
//	put     C → R  Request{put: {id, chunk hashes, delete key}}     ≤ 16 KiB
//	        R → C  Response{code}   OK: send; EXISTS: already held, done
//	        C → R  Chunk{index, data} × n                          ≤ 256 KiB + 64 B each
//	        R → C  Response{code, usage}                           after a synced commit
//
//	get     C → R  Request{get: {id, from}}
//	        R → C  Response{code, chunk hashes}                    ≤ 16 KiB
//	        R → C  Chunk{index, data} × (n - from)
//
//	delete  C → R  Request{delete: {id, signature}}
//	        R → C  Response{code}
//
//	has     C → R  Request{has: {ids ≤ 256}}
//	        R → C  Response{code, present}
//
// The relay checks every chunk against its announced hash as it arrives
// (ErrCorrupt), the reader every chunk it fetches (ErrBadBlob). An upload
// is invisible (Get says not found) until its last chunk is on disk; a
// crash or a broken stream drops it.
//
// # Quotas and disk accounting
//
// The uploader is the uploading connection's peer id (a device's, never an
// account). A relay caps each uploader's bytes and blobs
// (WithUploaderQuota, ErrQuota) and all blobs together (WithRelayBudget,
// ErrRelayFull), reserving an upload's size before taking its first
// chunk; it rate-limits uploads, deletions and fetches per peer
// (WithPutRate, WithGetRate, ErrRateLimited). Usage per uploader and the
// relay's totals are stored with every blob, in the same synced batch, and
// exported as metrics (NewMetricsTracer).
//
// Peer ids cost nothing to make, so the uploader quota alone does not
// stop one machine from filling the relay's budget with throwaway peers.
// The peers connecting from one source address (netkit.MultiaddrSource:
// an IPv4 address, an IPv6 /64) therefore share an upload budget, a token
// bucket of chunk bytes (WithIPUploadRate; by default 1 GiB at once, then
// 256 MiB an hour). An upload takes its size from it with the rest of its
// claim, after the quota checks and before its first chunk, and gets it
// back if it fails (a bad chunk, a broken stream, a store error); a blob
// the relay already holds (CodeExists) and a refused upload take nothing.
// Beyond it the upload is refused with ErrRateLimited and a retry hint.
// The buckets live in memory: a restart refills them, and they bound one
// address, not an attacker with many. Connections over relayed circuits
// all count as one address (netkit.SourceCircuit); the client never
// uploads over one (it dials relays directly, and a circuit carries too
// little for one chunk).
//
// Result codes (Code, pb.Code) map to the sentinels ErrNotFound,
// ErrUnauthorized, ErrMalformed, ErrTooLarge, ErrQuota, ErrRelayFull,
// ErrRateLimited, ErrCorrupt and ErrUnavailable; CodeExists is a success.
package blobs
