package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
)

// DefaultCNICacheDir is where libcni (containerd, CRI-O) caches every
// attachment's config and result.
const DefaultCNICacheDir = "/var/lib/cni"

// Adopted is the outcome of adopting one cached attachment.
type Adopted struct {
	ContainerID string
	IfName      string
	Netns       string
	Err         error // nil: attached (or already was)
}

// Adopt attaches podscope to pods that were started before podscope was
// chained into the network: for every attachment of conflist's network in
// the runtime's libcni cache, it runs podscope's ADD with the cached result
// as prevResult, the cached CNI_ARGS and the cached pod annotations. ADD is
// idempotent, so adopting twice changes nothing. Call it in the node's
// network namespace, with conflist the network's current conflist (which
// must hold a podscope entry). Attachments whose netns is gone are skipped
// with an error in their Adopted.
func Adopt(conflist []byte, cacheDir string) ([]Adopted, error) {
	if cacheDir == "" {
		cacheDir = DefaultCNICacheDir
	}
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return nil, fmt.Errorf("adopt: parsing conflist: %w", err)
	}
	var entry *libcni.PluginConfig
	for _, p := range list.Plugins {
		if p.Network.Type == "podscope" {
			entry = p
		}
	}
	if entry == nil {
		return nil, fmt.Errorf("adopt: conflist of network %q has no podscope entry: chain podscope first (podscope-install)", list.Name)
	}
	cni := libcni.NewCNIConfigWithCacheDir(nil, cacheDir, nil)
	atts, err := cni.GetCachedAttachments("")
	if err != nil {
		return nil, fmt.Errorf("adopt: reading the CNI cache under %s: %w", cacheDir, err)
	}
	var out []Adopted
	for _, a := range atts {
		if a.Network != list.Name {
			continue
		}
		res := Adopted{ContainerID: a.ContainerID, IfName: a.IfName, Netns: a.NetNS}
		res.Err = adoptOne(cni, list, entry, a)
		out = append(out, res)
	}
	return out, nil
}

func adoptOne(cni *libcni.CNIConfig, list *libcni.NetworkConfigList, entry *libcni.PluginConfig, a *libcni.NetworkAttachment) error {
	if a.NetNS == "" {
		return errors.New("cached attachment has no netns")
	}
	if _, err := os.Stat(a.NetNS); err != nil {
		return fmt.Errorf("netns %s: %w (pod gone; its DEL will clean up)", a.NetNS, err)
	}
	rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.NetNS, IfName: a.IfName, Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs}
	prev, err := cni.GetNetworkListCachedResult(list, rt)
	if err != nil {
		return fmt.Errorf("cached result: %w", err)
	}
	if prev == nil {
		return errors.New("no cached result")
	}
	var conf map[string]any
	if err := json.Unmarshal(entry.Bytes, &conf); err != nil {
		return err
	}
	conf["name"], conf["cniVersion"], conf["prevResult"] = list.Name, list.CNIVersion, prev
	// What libcni would inject: the capability args the entry declares.
	rc := map[string]any{}
	for capName, on := range entry.Network.Capabilities {
		if v, ok := a.CapabilityArgs[capName]; ok && on {
			rc[capName] = v
		}
	}
	if len(rc) > 0 {
		conf["runtimeConfig"] = rc
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return err
	}
	var args []string
	for _, kv := range a.CniArgs {
		args = append(args, kv[0]+"="+kv[1])
	}
	_, err = add(&skel.CmdArgs{ContainerID: a.ContainerID, Netns: a.NetNS, IfName: a.IfName,
		Args: strings.Join(args, ";"), StdinData: stdin})
	return err
}
