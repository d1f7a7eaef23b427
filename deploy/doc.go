// Package deploy has no code of its own. Its tests hold the packaging files
// of the repository to the program they package: the Dockerfile and
// .dockerignore, docker-compose.yml with deploy/compose/haproxy.cfg, and the
// Kubernetes manifests in deploy/kubernetes. They load each file with the
// parser its tool uses where Go has one (compose-go, k8s.io/api types
// decoded strictly), check names, URLs, ports, health checks and timeouts
// against each other, and check every COORDPROXY_* variable against the ones
// cmd/coordproxy/config.go declares.
package deploy
