package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"go.uber.org/zap"
)

// The peer: etcd's own grpc-proxy (`etcd grpc-proxy start`, from the etcd
// module coordbench is built with), the tool a user would otherwise put in
// front of etcd. With -peer it is a third target beside etcd and coordproxy
// (target "grpc-proxy"), a child process like the proxy, so that its CPU is
// read from /proc and its own metrics (/proxy/metrics: its /metrics is
// etcd's, passed through) give its allocations.

const roleGRPCProxy = "__serve-grpc-proxy"

// serveGRPCProxy runs etcd's grpc-proxy in front of endpoint until ctx
// ends, and says READY once it answers a read.
func serveGRPCProxy(ctx context.Context, endpoint string, stdout io.Writer) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	dir, err := os.MkdirTemp("", "coordbench-grpc-proxy")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// etcdmain reads its command line from os.Args.
	os.Args = []string{"etcd", "grpc-proxy", "start", "--endpoints=" + strings.TrimPrefix(endpoint, "http://"),
		"--listen-addr=" + addr, "--data-dir=" + dir}
	go etcdmain.Main(os.Args)
	if err := answers(ctx, addr); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "READY %s\n", addr)
	<-ctx.Done()
	os.RemoveAll(dir)
	os.Exit(0) // etcdmain has no stop
	return nil
}

// answers waits until a read through addr succeeds.
func answers(ctx context.Context, addr string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(rctx, "coordbench-ready")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(errors.New("etcd's grpc-proxy does not answer"), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
