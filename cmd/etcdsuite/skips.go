package main

// cannotApply is the tests of etcd's suites that cannot apply to a proxy in
// front of etcd, each with the reason; they are skipped through the proxy
// (docs/etcd-suites.md lists them too). Everything else must pass through
// coordproxy wherever it passes straight at etcd.
var cannotApply = []struct{ suite, test, why string }{
	{"kv", "TestV3Hash", "Maintenance.Hash hashes one member's backend: which member a proxy would answer for is undefined, and coordproxy serves none of the cluster-wide Maintenance calls (README)"},
	{"kv", "TestV3HashKV", "Maintenance.HashKV, the same"},
	{"kv", "TestV3HashRestart", "Maintenance.Hash across a member's restart, the same"},
	{"kv", "TestV3AdditionalGRPCOptions", "its second case raises the member's gRPC receive limit with an embed-only server option (GRPCAdditionalServerOptions) that no flag of etcd sets and a proxy in front cannot know; its two other cases pass through coordproxy (with --max-request-bytes set to the member's), as proxy/conformance_kv_test.go checks against an etcd with a 3 MiB limit"},
	{"kv", "TestTLSGRPCRejectSecureClient", "it turns a plaintext member's TLS settings on after the member started, to see a TLS client's handshake fail; the proxy in front is configured from those settings, so it is the proxy's own client that fails the handshake and the caller gets the proxy's Unavailable where etcd's client times out"},
}
