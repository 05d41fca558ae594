// Package pb holds the generated protobuf wire types of protocols/turn
// (/kinmesh/turn-creds/1.0.0). They never appear in turn's public API:
// turn converts them to native types at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/turn/pb/turn.proto
//
// from the repository root (or `make generate`).
package pb
