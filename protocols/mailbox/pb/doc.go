// Package pb holds the generated protobuf wire types of
// protocols/mailbox (/kinmesh/mailbox/1.0.0) and of the relay's stored
// per-mailbox record. They never appear in mailbox's public API: mailbox
// converts them to native types at its boundary. Regenerate with
// `make generate`.
package pb
