// Package pb holds the generated protobuf wire types of
// protocols/discovery (/kinmesh/discovery/1.0.0) and of the relay's stored
// records. They never appear in discovery's public API: discovery converts
// them to native types at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/discovery/pb/discovery.proto
//
// from the repository root (or `make generate`).
package pb
