package nriplugin

import "github.com/podscope/podscope/pkg/audit"

// Identity is who an audited cgroup belongs to: pkg/audit's, so the
// Auditor is an Arming as it is.
type Identity = audit.Identity

var _ Arming = (*audit.Auditor)(nil)
