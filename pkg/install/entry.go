package install

import (
	"github.com/podscope/podscope/pkg/cniplugin"
)

// CheckEntry validates a podscope entry with the plugin's own config parser
// (unknown fields, policy, attach mode), so a ConfigMap with a typo or a bad
// policy is refused before it reaches the conflist, where it would fail
// every pod ADD on the node with CNI error 7.
func CheckEntry(entry []byte) error {
	_, err := cniplugin.ParseConfig(entry)
	return err
}
