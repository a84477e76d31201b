// Command podscope is the chained CNI plugin; see pkg/cniplugin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podscope/podscope/pkg/buildinfo"
	"github.com/podscope/podscope/pkg/cniplugin"
)

// 0.3.x is claimed because most primary CNIs (kindnet, flannel, Calico,
// Cilium) still write "cniVersion": "0.3.1" and a chained plugin must accept
// the conflist's version; CHECK (0.4.0) and GC/STATUS (1.1.0) are then simply
// never called.
func main() {
	skel.PluginMainFuncs(cniplugin.Funcs(), version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), buildinfo.String("podscope"))
}
