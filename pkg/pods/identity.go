package pods

// Identity is who a pod is, in Kubernetes' words: the one identity type of
// podscope. audit.Identity (a container: its pod, name and ID, carried by
// every audit event), the accounting line (podstate.Record) and the metrics'
// label sets embed it. Its JSON names are those of the audit event and the
// accounting line (docs/design.md), which are user contracts.
type Identity struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodUID    string `json:"podUID"`
}

// Identity is the Kubernetes identity of a registered pod. (The registry
// entry keeps its own names, name and uid, which are podscopectl's JSON.)
func (p Pod) Identity() Identity {
	return Identity{Namespace: p.Namespace, Pod: p.Name, PodUID: p.UID}
}
