// Package pb holds the generated protobuf wire types of protocols/blobs
// (/kinmesh/blobs/1.0.0) and of the relay's stored blob records. They
// never appear in blobs' public API: blobs converts them to native types
// at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/blobs/pb/blobs.proto
//
// from the repository root (or `make generate`).
package pb
