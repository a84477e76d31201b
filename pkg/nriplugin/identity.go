package nriplugin

// Identity is who an audited cgroup belongs to. It mirrors audit.Identity
// field for field, so the daemon hands it over unchanged; it lives here
// until pkg/audit is available to import.
type Identity struct {
	Namespace, Pod, PodUID, Container, ContainerID string
}
