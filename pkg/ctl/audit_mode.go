package ctl

import (
	"errors"

	"github.com/podscope/podscope/pkg/audit"
	"github.com/podscope/podscope/pkg/pins"
)

// auditMode reports the file-write audit mode pinned under root (podscope-nri
// pins it after its probe): "not loaded" when podscope-nri never ran there.
func auditMode(root pins.Root) string {
	m, err := audit.PinnedMode(root)
	if errors.Is(err, audit.ErrNotLoaded) {
		return "not loaded (podscope-nri not running on this root?)"
	}
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return string(m)
}

func cleanupAudit(root pins.Root) error {
	return audit.Cleanup(root)
}
