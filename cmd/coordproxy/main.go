// Command coordproxy serves etcd's Lock and Election APIs, its KV, Watch,
// Lease, Maintenance.Status, Auth.Authenticate and Cluster.MemberList
// passed through, and coordproxy.v1 (TryLock, fencing, semaphores,
// read/write locks, sessions) in front of an etcd cluster; with no
// endpoints it starts a real embedded etcd (dev mode). It is also the
// lock, elect and describe client commands, and probe.
package main

import (
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
