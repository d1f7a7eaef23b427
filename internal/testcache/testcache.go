// Package testcache makes go test's result cache see the sources of the
// programs a test builds and runs with a go command of its own. go test
// reruns a package only when its test binary or what the test read
// changed; a program built from source in a subprocess is neither, so a
// change to the proxy would leave such a test's cached pass standing.
package testcache

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ReadSources reads every Go source (tests apart), go.mod and go.sum under
// root, the module's root directory, skipping directories whose names
// start with a dot: go test records what a test reads, and any change to
// them reruns it.
func ReadSources(root string) {
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && strings.HasPrefix(name, ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") || name == "go.mod" || name == "go.sum" {
			os.ReadFile(path)
		}
		return nil
	})
}
