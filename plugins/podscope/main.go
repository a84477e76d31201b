// Command podscope is the chained CNI plugin; see pkg/cniplugin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podscope/podscope/pkg/buildinfo"
	"github.com/podscope/podscope/pkg/cniplugin"
)

func main() {
	skel.PluginMainFuncs(cniplugin.Funcs(), version.VersionsStartingFrom("0.4.0"), buildinfo.String("podscope"))
}
