// Package etcdio owns every request the proxy makes to etcd: the two etcd
// clients (the proxy's own credentials, and one without them for calls that
// carry the caller's token), the bound on unary requests in flight and its
// queue (limit.go), deadlines that run from the moment a request is sent
// (sendctx.go), the workers that send a waiting call's first requests
// (workers.go), the retry of a create transaction whose outcome is unknown
// (create.go), lease keep-alives that know a lower bound of each lease's
// expiry (keepalive.go), the stop of every wait when the proxy stops and the
// detached contexts of requests that must outlive their caller (stop.go),
// and the one watch per proxy that tells streams etcd lost its leader
// (leader.go). Services above it never reach etcd by another road.
package etcdio
