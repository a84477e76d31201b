package ctl

import "github.com/podscope/podscope/pkg/pins"

// auditMode reports the file-write audit mode pinned under root. pkg/audit
// has no PinnedMode yet, so this says "unknown" rather than guess.
func auditMode(root pins.Root) string {
	_ = root
	return "unknown"
}

// cleanupAudit unpins the audit programs; pkg/audit has no Cleanup yet, so
// removing the root (which cleanup does last) is what unpins them.
func cleanupAudit(root pins.Root) error {
	_ = root
	return nil
}
