// Package pb holds the generated protobuf wire types of protocols/contact.
// Regenerate with `make generate`.
package pb
