// Package pb holds the generated protobuf wire types of protocols/report
// (/kinmesh/report/1.0.0) and of the relay's stored record. They never
// appear in report's public API: report converts them to native types at
// its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/report/pb/report.proto
//
// from the repository root (or `make generate`).
package pb
