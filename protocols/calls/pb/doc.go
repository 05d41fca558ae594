// Package pb holds the generated protobuf wire types of protocols/calls
// (/kinmesh/call/1.0.0). They never appear in calls' public API: calls
// converts them to native types at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/calls/pb/calls.proto
//
// from the repository root (or `make generate`).
package pb
