// Package pb holds the generated protobuf wire types of protocols/presence
// (/kinmesh/presence/1.0.0) and of the device's stored record. They never
// appear in presence's public API: presence converts them to native types
// at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/presence/pb/presence.proto
//
// from the repository root (or `make generate`).
package pb
