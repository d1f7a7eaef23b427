// Package proxy owns coordproxy's server lifecycle: the listener, one gRPC
// server carrying etcd's Lock, Election and Lease services (and reflection),
// the etcd client, the embedded single-member etcd of dev mode, and the
// graceful stop. It takes a plain Config and never reads the environment.
package proxy
