// Package pb holds the generated protobuf wire types of protocols/message.
// Regenerate with `make generate`.
package pb
