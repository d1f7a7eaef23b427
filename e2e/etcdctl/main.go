// Command etcdctl is etcd's own etcdctl of the module's pinned version
// (go.etcd.io/etcd/etcdctl/v3), built by the e2e tests to drive coordproxy
// with the tool etcd's users already have.
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() { ctlv3.MustStart() }
