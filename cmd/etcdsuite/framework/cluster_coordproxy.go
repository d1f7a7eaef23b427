// Copyright 2016 The etcd Authors (the shape: cluster_proxy.go)
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//go:build cluster_coordproxy

// This file is coordproxy's, not etcd's: cmd/etcdsuite copies it into
// etcd's tests/v3/framework/integration, next to cluster_direct.go and
// cluster_proxy.go, and builds etcd's integration tests with the
// cluster_coordproxy tag. Where cluster_proxy.go puts etcd's grpc-proxy
// between each client's KV, Watch and Lease and etcd, this puts a whole
// coordproxy (every service, on a real gRPC port) in front of each client
// the framework makes: the client dials the proxy, and the proxy dials the
// client's etcd endpoints.

package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/proxy"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/connectivity"
)

// ThroughProxy is false: coordproxy claims to be etcd on the wire, so the
// tests get no allowance that etcd's grpc-proxy needs.
const ThroughProxy = false

func init() { clientOfMember = coordproxyClientOfMember }

// direct is each proxied client's own client straight to etcd, for the
// Cluster, Maintenance and Auth services (see throughCoordproxy).
var (
	directMu sync.Mutex
	direct   = map[*clientv3.Client]*clientv3.Client{}
)

// ToGRPC is the raw gRPC clients on c's connection, to the proxy, but for
// Cluster and Auth, which go straight to etcd (see throughCoordproxy).
func ToGRPC(c *clientv3.Client) GRPCAPI {
	admin := c.ActiveConnection()
	directMu.Lock()
	if d, ok := direct[c]; ok {
		admin = d.ActiveConnection()
	}
	directMu.Unlock()
	return GRPCAPI{
		pb.NewClusterClient(admin),
		pb.NewKVClient(c.ActiveConnection()),
		pb.NewLeaseClient(c.ActiveConnection()),
		pb.NewWatchClient(c.ActiveConnection()),
		pb.NewMaintenanceClient(c.ActiveConnection()),
		pb.NewAuthClient(admin),
		v3lockpb.NewLockClient(c.ActiveConnection()),
		v3electionpb.NewElectionClient(c.ActiveConnection()),
	}
}

// newClientV3 is a client of cfg's endpoints through a coordproxy of its
// own, which assumes etcd's default request limit.
func newClientV3(cfg clientv3.Config) (*clientv3.Client, error) {
	return throughCoordproxy(cfg, proxy.Config{MaxRequestBytes: embed.DefaultMaxRequestBytes})
}

// coordproxyClientOfMember is a member's client (NewClientV3) through a
// coordproxy configured as an operator would put it in front of that
// member: the member's request limit as --max-request-bytes, and with a
// member that serves TLS, the same certificates on the proxy's port and
// towards the member.
func coordproxyClientOfMember(m *Member, cfg clientv3.Config) (*clientv3.Client, error) {
	pc := proxy.Config{MaxRequestBytes: m.MaxRequestBytes}
	if t := m.ClientTLSInfo; t != nil {
		pc.CertFile, pc.KeyFile, pc.TrustedCAFile, pc.ClientCertAuth = t.CertFile, t.KeyFile, t.TrustedCAFile, t.ClientCertAuth
		pc.EtcdCert, pc.EtcdKey, pc.EtcdCACert = t.CertFile, t.KeyFile, t.TrustedCAFile
	}
	return throughCoordproxy(cfg, pc)
}

func throughCoordproxy(cfg clientv3.Config, pc proxy.Config) (*clientv3.Client, error) {
	// cmd/etcdsuite -batching: the default, or every transaction nested
	// as a batch (as coordproxy's package tests run), or none batched.
	batching := etcdio.BatchConcurrent
	switch b := os.Getenv("COORDPROXY_ETCD_BATCHING"); b {
	case "", "concurrent":
	case "always":
		batching = etcdio.BatchAlways
	case "off":
		batching = etcdio.BatchOff
	default:
		return nil, fmt.Errorf("COORDPROXY_ETCD_BATCHING=%q: want concurrent, always or off", b)
	}
	pc.Endpoints, pc.Listen, pc.DialTimeout, pc.EtcdBatching = cfg.Endpoints, "127.0.0.1:0", cfg.DialTimeout, batching
	// cmd/etcdsuite -watches: shared (the default), forced (shared watches
	// never end, so that a test's later watchers of a key join one with
	// history, catching up and handed over) or unshared.
	// cmd/etcdsuite -read-cache-keys: the proxy's --read-cache-keys.
	if n, err := strconv.Atoi(os.Getenv("COORDPROXY_READ_CACHE_KEYS")); err == nil {
		pc.ReadCacheKeys = n
	}
	switch os.Getenv("COORDPROXY_WATCHES") {
	case "forced":
		pc.WatchLinger = -1
	case "unshared":
		pc.UnsharedWatches = true
	}
	srv := proxy.New(pc)
	if err := srv.Start(context.Background()); err != nil {
		return nil, fmt.Errorf("coordproxy in front of %v: %w", cfg.Endpoints, err)
	}
	pcfg := cfg
	pcfg.Endpoints = []string{srv.Addr().String()}
	c, err := clientv3.New(pcfg)
	if err != nil {
		stopCoordproxy(srv)
		return nil, err
	}
	// The client's Cluster, Maintenance and Auth go straight to etcd, as
	// in etcd's own grpc-proxy variant (cluster_proxy.go replaces only KV,
	// Watch and Lease on the client): coordproxy's MemberList lists its
	// replicas, by design, where the framework waits for etcd's members,
	// and the cluster-wide Maintenance calls and user and role management
	// are not served through it (tests set up RBAC with them). So do the
	// raw gRPC clients of Cluster and Auth (ToGRPC); the others go through
	// the proxy. A client's own authentication (Username, Password) goes
	// through the proxy, which passes Authenticate on.
	d, err := clientv3.New(cfg)
	if err != nil {
		c.Close()
		stopCoordproxy(srv)
		return nil, err
	}
	c.Cluster, c.Maintenance, c.Auth = d.Cluster, d.Maintenance, d.Auth
	directMu.Lock()
	direct[c] = d
	directMu.Unlock()
	w := &stopsCoordproxy{Watcher: c.Watcher, srv: srv, c: c, direct: d}
	c.Watcher = w
	// A test may close the client's connection itself and drop the client
	// (TestWatchErrConnClosed): the proxy stops then too.
	go func() {
		cc := c.ActiveConnection()
		for st := cc.GetState(); st != connectivity.Shutdown; st = cc.GetState() {
			cc.WaitForStateChange(context.Background(), st)
		}
		w.stop()
	}()
	return c, nil
}

// stopsCoordproxy stops the client's proxy, and closes its client straight
// to etcd, when the client closes (clientv3.Client.Close closes its Watcher
// after cancelling its calls).
type stopsCoordproxy struct {
	clientv3.Watcher
	srv       *proxy.Server
	c, direct *clientv3.Client
	once      sync.Once
}

func (w *stopsCoordproxy) Close() error {
	err := w.Watcher.Close()
	w.stop()
	return err
}

func (w *stopsCoordproxy) stop() {
	w.once.Do(func() {
		directMu.Lock()
		delete(direct, w.c)
		directMu.Unlock()
		w.direct.Close()
		stopCoordproxy(w.srv)
	})
}

func stopCoordproxy(srv *proxy.Server) {
	// The closing client's calls are cancelled already; what is left
	// ends within the bound.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}
