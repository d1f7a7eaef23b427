// Command coordproxy serves etcd's Lock, Election and Lease APIs in front of
// an etcd cluster. With no endpoints it starts a real embedded etcd (dev mode).
package main

import (
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
