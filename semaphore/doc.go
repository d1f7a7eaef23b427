// Package semaphore serves coordproxy's SemaphoreService: up to a limit of
// holders per name, on a lock's key layout (name/hex(lease), attached to the
// lease) with the limit as the value. The first limit keys by create
// revision hold; the others wait first come, first served, on the name's
// shared queue (rank.go), and package grant confirms each grant.
package semaphore
