// Command etcd is the real etcd server of the module's pinned version
// (go.etcd.io/etcd/server/v3), built by the e2e tests so that they run
// against real etcd processes without anything installed by hand.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
