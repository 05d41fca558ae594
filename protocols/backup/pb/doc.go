// Package pb holds the generated protobuf types of protocols/backup
// (/kinmesh/backup/1.0.0): the wire frames, the relay's stored records
// and a backup's plaintext. They never appear in backup's public API:
// backup converts them to native types at its boundary. Regenerate with
//
//	protoc --go_out=. --go_opt=module=github.com/kinmesh/kinmesh protocols/backup/pb/backup.proto
//
// from the repository root (or `make generate`).
package pb
