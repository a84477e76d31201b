package ctl

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/podscope/podscope/pkg/datapath"
	"github.com/podscope/podscope/pkg/pins"
	"github.com/podscope/podscope/pkg/pods"
	"github.com/podscope/podscope/pkg/podstate"
)

// CleanupReport says what `podscopectl cleanup` removed.
type CleanupReport struct {
	BPFFSRoot   string   `json:"bpffsRoot"`
	PodsLogged  []string `json:"podsLogged"`
	RootRemoved bool     `json:"rootRemoved"`
	Errors      []string `json:"errors,omitempty"`
}

// cleanup logs every registered pod's final counters (reason "cleanup"),
// then detaches and unpins the datapath, the registry and the root.
func cleanup(root pins.Root, stateDir string) (*CleanupReport, error) {
	rep := &CleanupReport{BPFFSRoot: root.Path, PodsLogged: []string{}}
	if _, err := os.Stat(root.Path); errors.Is(err, os.ErrNotExist) {
		return rep, nil
	}
	logged, err := podstate.TeardownAll(root, stateDir, "cleanup")
	for _, p := range logged {
		rep.PodsLogged = append(rep.PodsLogged, p.Ref())
	}
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
	if err := datapath.Cleanup(root); err != nil {
		rep.Errors = append(rep.Errors, "datapath: "+err.Error())
	}
	if err := cleanupAudit(root); err != nil {
		rep.Errors = append(rep.Errors, "audit: "+err.Error())
	}
	if err := pods.Remove(root); err != nil {
		rep.Errors = append(rep.Errors, "pod registry: "+err.Error())
	}
	if err := os.RemoveAll(root.Path); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	} else {
		rep.RootRemoved = true
	}
	if len(rep.Errors) > 0 {
		return rep, fmt.Errorf("cleanup of %s incomplete: %v; rerun `podscopectl cleanup`, or remove the pins by hand with `rm -r %s`", root.Path, rep.Errors, root.Path)
	}
	return rep, nil
}

func printCleanup(w io.Writer, rep *CleanupReport) error {
	_, err := fmt.Fprintf(w, "removed podscope state under %s: %d pod(s) detached and logged to the accounting log\n", rep.BPFFSRoot, len(rep.PodsLogged))
	return err
}
