// Package rwlock serves coordproxy's RWLockService with the keys of etcd's
// experimental/recipes RWMutex: the name is the prefix given to
// recipe.NewRWMutex, which appends "/" (name "x" is NewRWMutex(s, "x")); a
// reader's key is name+"/read/"+UnixNano, a writer's name+"/write/"+UnixNano,
// attached to the caller's lease. A reader holds once no writer's key is
// older than its own, a writer once no key under the name is; the proxy waits
// for that on the name's shared queue (readerWait) where the recipe watches the
// blocking key itself, and package grant confirms each grant.
package rwlock
