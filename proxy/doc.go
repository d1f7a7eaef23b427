// Package proxy owns coordproxy's server lifecycle (server.go: Start in
// steps, shutdown.go: the drain and the stop): the listener (plaintext, TLS
// or mTLS, tls.go), one gRPC server carrying every service the proxy serves
// (servedServices: etcd's Lock, Election, KV, Watch, Lease, Maintenance,
// Auth and Cluster, and coordproxy.v1's Lock, Semaphore, RWLock, Election
// and Session services) with health and reflection, the HTTP side of the
// same port (http.go: the JSON gateway, /healthz, /readyz, /metrics,
// pprof), the edge every call passes (edge.go: drain refusal, package
// authz's decision, metadata forwarding, and wire.go: errors in etcd's
// codes and words), per-RPC metrics (rpcstats.go), and the
// embedded single-member etcd of dev mode (embed.go). It takes a plain
// Config (config.go, DefaultConfig) and never reads the environment.
package proxy
