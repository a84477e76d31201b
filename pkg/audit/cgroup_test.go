package audit

import "github.com/podscope/podscope/pkg/cgroups"

// cgroup2Root is the unified hierarchy's mount point, where tests make
// their scratch cgroups.
func cgroup2Root() (string, error) {
	m, err := cgroups.FindUnifiedSelf()
	return m.Point, err
}
