package deploy_test

import (
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// deploy/networkpolicy turns NetworkPolicy enforcement on: read-only RBAC
// for exactly what the compiler reads, the token, the node's name and the
// flag, and nothing else. The cluster suite's overlay uses it.
func TestNetworkPolicyComponent(t *testing.T) {
	base, np := build(t, "hack/k8s/overlay"), build(t, "hack/k8s/overlay/networkpolicy")
	if len(base.roles) != 0 || len(base.bindings) != 0 {
		t.Fatal("without the component podscope must have no API access")
	}
	if len(np.roles) != 1 || len(np.bindings) != 1 {
		t.Fatalf("want one ClusterRole and one binding, have %v", np.kinds)
	}
	want := map[string]bool{"networking.k8s.io/networkpolicies": true, "/pods": true, "/namespaces": true}
	got := map[string]bool{}
	for _, r := range np.roles[0].Rules {
		if !reflect.DeepEqual(r.Verbs, []string{"get", "list", "watch"}) {
			t.Errorf("rule %+v: want only get, list, watch", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				got[g+"/"+res] = true
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ClusterRole covers %v, want %v", got, want)
	}
	b := np.bindings[0]
	if b.RoleRef.Name != np.roles[0].Name || len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" ||
		b.Subjects[0].Name != np.sas[0].Name || b.Subjects[0].Namespace != np.sas[0].Namespace {
		t.Errorf("binding %+v does not bind the role to podscope's service account", b)
	}
	spec := np.daemonSets[0].Spec.Template.Spec
	if spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken {
		t.Error("the token is not mounted: the controller cannot reach the API")
	}
	nri := container(t, spec.Containers, "podscope-nri")
	if !slices.Contains(nri.Args, "--networkpolicy") {
		t.Errorf("podscope-nri args %v lack --networkpolicy", nri.Args)
	}
	found := false
	for _, e := range nri.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			found = true
		}
	}
	if !found {
		t.Errorf("podscope-nri env %v: no NODE_NAME from spec.nodeName", nri.Env)
	}
	// Everything else is the base overlay's.
	bspec := base.daemonSets[0].Spec.Template.Spec
	strip := func(c corev1.Container) corev1.Container {
		c.Args = slices.DeleteFunc(slices.Clone(c.Args), func(a string) bool { return a == "--networkpolicy" })
		c.Env = slices.DeleteFunc(slices.Clone(c.Env), func(e corev1.EnvVar) bool {
			return e.Name == "NODE_NAME" || e.Name == "KUBERNETES_SERVICE_HOST" || e.Name == "KUBERNETES_SERVICE_PORT"
		})
		return c
	}
	if !reflect.DeepEqual(strip(nri), container(t, bspec.Containers, "podscope-nri")) {
		t.Error("podscope-nri differs from the base in more than the flag and the environment")
	}
	if !reflect.DeepEqual(spec.InitContainers, bspec.InitContainers) || !reflect.DeepEqual(spec.Containers[1:], bspec.Containers[1:]) {
		t.Error("other containers differ from the base")
	}
}
