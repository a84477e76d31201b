package deploy_test

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The cluster suite's overlays (hack/k8s/overlay, used on the CI node and on
// kind) change only the image and its pull policy: everything else the suite
// proves is deploy/ itself.
func TestOverlayChangesOnlyTheImage(t *testing.T) {
	for _, tc := range []struct{ base, overlay string }{
		{"deploy", "hack/k8s/overlay"},
		{"deploy/cleanup", "hack/k8s/overlay/cleanup"},
	} {
		base, over := build(t, tc.base), build(t, tc.overlay)
		if !reflect.DeepEqual(base.kinds, over.kinds) || !reflect.DeepEqual(base.namespaces, over.namespaces) ||
			!reflect.DeepEqual(base.sas, over.sas) || !reflect.DeepEqual(base.configMaps, over.configMaps) {
			t.Errorf("%s: objects other than the DaemonSet differ from %s", tc.overlay, tc.base)
		}
		if len(base.daemonSets) != 1 || len(over.daemonSets) != 1 {
			t.Fatalf("%s: want one DaemonSet in each", tc.overlay)
		}
		want, got := base.daemonSets[0].DeepCopy(), over.daemonSets[0].DeepCopy()
		local := 0
		norm := func(cs []corev1.Container, ref []corev1.Container) {
			for i := range cs {
				if ref[i].Image == "podscope:dev" {
					if cs[i].Image != "localhost/podscope/podscope:e2e" || cs[i].ImagePullPolicy != corev1.PullNever {
						t.Errorf("%s: container %s: image %s, pull %s; want the local image, never pulled",
							tc.overlay, cs[i].Name, cs[i].Image, cs[i].ImagePullPolicy)
					}
					cs[i].Image, cs[i].ImagePullPolicy = ref[i].Image, ref[i].ImagePullPolicy
					local++
				}
			}
		}
		if len(got.Spec.Template.Spec.InitContainers) != len(want.Spec.Template.Spec.InitContainers) ||
			len(got.Spec.Template.Spec.Containers) != len(want.Spec.Template.Spec.Containers) {
			t.Fatalf("%s: containers differ from %s", tc.overlay, tc.base)
		}
		norm(got.Spec.Template.Spec.InitContainers, want.Spec.Template.Spec.InitContainers)
		norm(got.Spec.Template.Spec.Containers, want.Spec.Template.Spec.Containers)
		if local == 0 {
			t.Errorf("%s: no container of podscope's image", tc.overlay)
		}
		if !reflect.DeepEqual(want, got) {
			t.Errorf("%s: the DaemonSet differs from %s in more than the image:\n%+v\n%+v", tc.overlay, tc.base, got.Spec, want.Spec)
		}
	}
}
