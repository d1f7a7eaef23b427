// Command etcd is a real etcd 3.5 server (go.etcd.io/etcd/server/v3 at the
// version this directory's go.mod pins), built by the tests that run
// coordproxy against the etcd versions users run (proxytest.EtcdOfVersion).
// A module of its own: one module cannot hold two versions of etcd.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
