package install

import (
	"os"

	"github.com/podscope/podscope/pkg/cniplugin"
)

// DefaultCNICacheDir is where containerd's libcni keeps every pod's cached
// CNI result: what adoption reads to attach to pods started before podscope.
const DefaultCNICacheDir = cniplugin.DefaultCNICacheDir

// adoptFunc is cniplugin.Adopt; a variable so tests can watch the calls.
var adoptFunc = cniplugin.Adopt

// adoptRunning attaches podscope to the pods of the network in the config at
// path that the runtime started before podscope was chained in (docs/design.md:
// "adoption without restarts"). It runs in the node's network namespace, as
// the installer does. A pod that cannot be adopted (its netns is gone, it is
// being deleted) is logged and left alone: its own DEL cleans up.
func adoptRunning(path, cacheDir string, logf func(string, ...any)) {
	data, err := os.ReadFile(path)
	if err != nil {
		logf("adopt: reading %s: %v", path, err)
		return
	}
	res, err := adoptFunc(data, cacheDir)
	if err != nil {
		logf("adopt: %v", err)
		return
	}
	ok := 0
	for _, a := range res {
		if a.Err != nil {
			logf("adopt: pod %s (%s in %s) not attached: %v", a.ContainerID, a.IfName, a.Netns, a.Err)
			continue
		}
		ok++
	}
	logf("adopt: %d of %d running pods of this network attached (from %s)", ok, len(res), cacheDir)
}
