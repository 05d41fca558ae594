// Package pb holds the generated protobuf wire types of protocols/e2ee.
// They never appear in e2ee's public API: e2ee converts them to native
// types at its boundary. Regenerate with `make generate`.
package pb
