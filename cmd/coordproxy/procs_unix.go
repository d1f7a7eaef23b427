//go:build unix && !linux

package main

import "syscall"

// becomeSubreaper: only Linux has subreapers; elsewhere the process group
// stands for the descendants.
func becomeSubreaper() {}

// signalDescendants signals the process group self leads, self included:
// without /proc, its members can be neither listed nor counted (0).
func signalDescendants(self int, sig syscall.Signal) int {
	if sig != 0 {
		syscall.Kill(-self, sig)
	}
	return 0
}
