// Package proxy owns coordproxy's server lifecycle: the listener (plaintext,
// TLS or mTLS), one gRPC server carrying etcd's Lock, Election and Lease
// services (and reflection), the etcd client (with TLS and its own user),
// the embedded single-member etcd of dev mode, and the graceful stop. It
// takes a plain Config and never reads the environment.
package proxy
