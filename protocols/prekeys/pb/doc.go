// Package pb holds the generated protobuf wire types of protocols/prekeys
// (/kinmesh/prekeys/1.0.0) and of the relay's stored per-account records.
// They never appear in prekeys' public API: prekeys converts them to native
// types at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/prekeys/pb/prekeys.proto
//
// from the repository root (or `make generate`).
package pb
