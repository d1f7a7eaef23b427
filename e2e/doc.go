// Package e2e tests coordproxy as users run it: real etcd server processes
// (a 3-member cluster built from the pinned etcd module, each member's peer
// and client traffic through a fault proxy the tests control) and real
// coordproxy processes, with clients balancing over two proxies.
//
// The fault matrix (faults_test.go) runs a workload of fenced critical
// sections and elections through each fault and checks, from etcd's own
// data, that no two critical sections overlapped, that every accepted write
// came from the holder at its revision, that progress resumed, and that no
// waiter key outlived its client. badinput_test.go checks the answers to bad
// requests and the keyspace after them, next to etcd's native answers.
// docs/reliability.md shows both tables as run.
//
// COORDPROXY_E2E_REPORT=<file> appends the figures as JSON to file;
// COORDPROXY_E2E_KEEP_LOGS=<dir> keeps the coordproxy logs (with goroutine
// dumps) of a failed test in dir.
package e2e
