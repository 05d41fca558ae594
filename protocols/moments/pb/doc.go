// Package pb holds the generated protobuf wire types of protocols/moments
// (frames, key distributions, /kinmesh/moments/1.0.0) and of the records
// relays and devices store. They never appear in moments' public API:
// moments converts them to native types at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/moments/pb/moments.proto
//
// from the repository root (or `make generate`).
package pb
